"""Property tests of the wire codec: lossless round trips, and ProtocolError as the only failure."""

from __future__ import annotations

import dataclasses
import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import MESSAGE_TYPES, ProtocolError, decode, encode

from .strategies import PLAIN, any_message, realistic_turn_node, sample_messages

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(any_message)
def test_every_message_round_trips(message: object) -> None:
    assert decode(encode(message), type(message)) == message
    assert decode(encode(message)) == message


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_protocol_error(payload: bytes) -> None:
    try:
        decoded = decode(payload)
    except ProtocolError as err:
        assert err.reason
        return
    # Only a genuine message can get through.
    assert type(decoded) in MESSAGE_TYPES.values()


@FAST
@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.integers(-3, 5), PLAIN)
def test_arbitrary_envelopes_raise_only_protocol_error(schema: str, version: int, body: object) -> None:
    payload = msgpack.packb({"schema": schema, "version": version, "body": body}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode(payload)


def _body(message: object) -> dict:
    return msgpack.unpackb(encode(message), raw=False)["body"]


def _envelope(message: object, body: dict, version: int | None = None) -> bytes:
    cls = type(message)
    envelope = {"schema": cls.SCHEMA, "version": cls.SCHEMA_VERSION if version is None else version, "body": body}
    return msgpack.packb(envelope, use_bin_type=True)


@FAST
@given(any_message, st.data())
def test_field_level_corruption_is_rejected(message: object, data: st.DataObject) -> None:
    body = _body(message)
    name = data.draw(st.sampled_from(sorted(body)))

    missing = {k: v for k, v in body.items() if k != name}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(message, missing))
    assert err.value.reason == "schema_violation"

    extra = {**body, data.draw(st.text(min_size=1).filter(lambda k: k not in body)): 1}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(message, extra))
    assert err.value.reason == "schema_violation"

    # A dict where a scalar, list or packed array is expected is wrong for every field
    # except free-form TaskSpec.params (inside ``task``, which is itself a mapping).
    wrong_type = {**body, name: [{"not": "valid"}] if isinstance(body[name], dict) else {"not": "valid"}}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(message, wrong_type))
    assert err.value.reason == "schema_violation"

    with pytest.raises(ProtocolError) as err:
        decode(_envelope(message, body, version=type(message).SCHEMA_VERSION + 1))
    assert err.value.reason == "unsupported_version"


@pytest.mark.parametrize("message", sample_messages("r1"), ids=lambda m: type(m).__name__)
def test_fixed_examples_round_trip_and_size_limit(message: object) -> None:
    payload = encode(message)
    assert decode(payload, type(message)) == message
    with pytest.raises(ProtocolError) as err:
        decode(payload, max_bytes=len(payload) - 1)
    assert err.value.reason == "oversized"
    other = next(cls for cls in MESSAGE_TYPES.values() if cls is not type(message))
    with pytest.raises(ProtocolError) as err:
        decode(payload, other)
    assert err.value.reason == "wrong_schema"


@pytest.mark.parametrize("message", sample_messages("r1"), ids=lambda m: type(m).__name__)
def test_a_message_of_another_run_is_refused_only_when_the_run_is_pinned(message: object) -> None:
    payload = encode(dataclasses.replace(message, run_id="r2"))
    assert decode(payload, type(message)).run_id == "r2"
    assert decode(payload, type(message), run_id="r2").run_id == "r2"
    with pytest.raises(ProtocolError) as err:
        decode(payload, type(message), run_id="r1")
    assert err.value.reason == "wrong_run" and "'r2'" in err.value.detail


def test_sample_messages_cover_every_type() -> None:
    assert {type(m) for m in sample_messages("r1")} == set(MESSAGE_TYPES.values())
    assert all(dataclasses.is_dataclass(m) for m in sample_messages("r1"))


def test_turn_node_logprobs_travel_as_float32() -> None:
    node = realistic_turn_node("r1", 1, action_tokens=3)
    body = _body(node)
    assert body["action_logprobs"] == struct.pack("3f", *node.action_logprobs)

    # A value finer than float32 arrives rounded, never rejected: the engine's are float32 already.
    fine = dataclasses.replace(node, action_logprobs=[-0.1, -1e-3, -1e300])
    assert decode(encode(fine)).action_logprobs == [*struct.unpack("2f", struct.pack("2f", -0.1, -1e-3)), -math.inf]

    # Version 1 packed float64: the same bytes would read as twice as many float32 values.
    v1 = {**body, "action_logprobs": struct.pack("3d", *node.action_logprobs)}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(node, v1, version=1))
    assert err.value.reason == "unsupported_version"

    with pytest.raises(ProtocolError) as err:
        decode(_envelope(node, {**body, "action_logprobs": body["action_logprobs"][:-1]}))
    assert err.value.reason == "schema_violation" and "multiple of 4" in err.value.detail
