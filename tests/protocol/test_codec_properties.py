"""Property tests of the wire codec: lossless round trips, and ProtocolError as the only failure."""

from __future__ import annotations

import math
import struct

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    MESSAGE_TYPES,
    CompletedTree,
    ProtocolError,
    TaskSpec,
    WorkItem,
    decode,
    encode,
    plain_body,
    replace,
)

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
    return plain_body(message)


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
    payload = encode(replace(message, run_id="r2"))
    assert decode(payload, type(message)).run_id == "r2"
    assert decode(payload, type(message), run_id="r2").run_id == "r2"
    with pytest.raises(ProtocolError) as err:
        decode(payload, type(message), run_id="r1")
    assert err.value.reason == "wrong_run" and "'r2'" in err.value.detail


def test_sample_messages_cover_every_type() -> None:
    assert {type(m) for m in sample_messages("r1")} == set(MESSAGE_TYPES.values())
    assert all(isinstance(m, msgspec.Struct) for m in sample_messages("r1"))


def test_turn_node_logprobs_travel_as_float32() -> None:
    node = realistic_turn_node("r1", 1, action_tokens=3)
    body = _body(node)
    assert body["behaviour_logprobs"] == struct.pack("3f", *node.behaviour_logprobs)

    # A value finer than float32 is stored rounded, never rejected: the engine's are float32 already.
    fine = replace(node, behaviour_logprobs=[-0.1, -1e-3, -1e-300])
    assert (
        list(fine.behaviour_logprobs)
        == list(decode(encode(fine)).behaviour_logprobs)
        == [*struct.unpack("3f", struct.pack("3f", -0.1, -1e-3, -1e-300))]
    )
    # One beyond float32's range would arrive as -inf: refused where it is built.
    with pytest.raises(ValueError, match="finite float32"):
        replace(node, behaviour_logprobs=[-0.1, -1e-3, -1e300])

    # Version 1 packed float64 and version 2 named them action_logprobs.
    v1 = {**body, "action_logprobs": struct.pack("3d", *node.behaviour_logprobs)}
    del v1["behaviour_logprobs"]
    v2 = {**v1, "action_logprobs": body["behaviour_logprobs"]}
    for version, old in ((1, v1), (2, v2)):
        with pytest.raises(ProtocolError) as err:
            decode(_envelope(node, old, version=version))
        assert err.value.reason == "unsupported_version"

    with pytest.raises(ProtocolError) as err:
        decode(_envelope(node, {**body, "behaviour_logprobs": body["behaviour_logprobs"][:-1]}))
    assert err.value.reason == "schema_violation" and "multiple of 4" in err.value.detail


def _completed_tree() -> CompletedTree:
    (tree,) = [m for m in sample_messages("r1") if isinstance(m, CompletedTree)]
    return tree


def test_completed_tree_records_carry_float32_logprobs_and_nothing_unread() -> None:
    tree = _completed_tree()
    records = _body(tree)["nodes"]
    assert [r["behaviour_logprobs"] for r in records] == [struct.pack("2f", -0.5, -0.25), struct.pack("f", -1.0)]
    assert set(records[0]) == {
        "node_id",
        "parent_id",
        "depth",
        "policy_version",
        "action_token_ids",
        "behaviour_logprobs",
        "observation_token_ids",
        "done",
        "reward",
    }

    # Version 1 records also carried value, visits and env_score, with float64 action_logprobs.
    v1_nodes = []
    for record, node in zip(records, tree.nodes, strict=True):
        v1 = {k: v for k, v in record.items() if k != "behaviour_logprobs"}
        logprobs = node.behaviour_logprobs
        v1_nodes.append(
            {
                **v1,
                "action_logprobs": struct.pack(f"{len(logprobs)}d", *logprobs),
                "value": 0.5,
                "visits": 1,
                "env_score": 0.0,
            }
        )
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(tree, {**_body(tree), "nodes": v1_nodes}, version=1), CompletedTree)
    assert err.value.reason == "unsupported_version"


@pytest.mark.parametrize(
    "logprobs",
    [[math.nan], [0.5], [-math.inf], [math.inf], [-0.5, -0.25]],
    ids=["nan", "positive", "minus_inf", "plus_inf", "one_too_many"],
)
def test_bad_behaviour_logprobs_are_refused_at_decode_under_one_rule(logprobs: list[float]) -> None:
    """The learner trains on decoded logprobs unchecked: this rule is the only guard."""
    node, tree = realistic_turn_node("r1", 1, action_tokens=1), _completed_tree()
    packed = struct.pack(f"{len(logprobs)}f", *logprobs)
    tree_body = _body(tree)
    tree_body["nodes"][1]["behaviour_logprobs"] = packed  # node "b" has one action token
    for message, body in ((node, {**_body(node), "behaviour_logprobs": packed}), (tree, tree_body)):
        with pytest.raises(ProtocolError) as err:
            decode(_envelope(message, body))
        assert err.value.reason == "schema_violation" and "behaviour_logprobs" in err.value.detail


def test_a_logprob_just_above_zero_is_engine_rounding_and_accepted() -> None:
    node = realistic_turn_node("r1", 1, action_tokens=2)
    near_zero = replace(node, behaviour_logprobs=[5e-7, 0.0])
    assert list(decode(encode(near_zero)).behaviour_logprobs) == [struct.unpack("f", struct.pack("f", 5e-7))[0], 0.0]
    with pytest.raises(ValueError, match="finite float32"):
        replace(node, behaviour_logprobs=[2e-6, 0.0])


def test_a_node_whose_logprobs_sum_below_float32_range_is_refused() -> None:
    # Each is a finite float32, but the learner's float32 path sum would be -inf.
    node = realistic_turn_node("r1", 1, action_tokens=2)
    assert decode(encode(replace(node, behaviour_logprobs=[-1.5e38, -1.5e38]))).behaviour_logprobs
    with pytest.raises(ValueError, match="finite sum"):
        replace(node, behaviour_logprobs=[-2e38, -2e38])


@pytest.mark.parametrize(
    "params",
    [{"x": math.nan}, {"x": [math.inf]}, {"x": {1: "a"}}, {"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}],
    ids=["nan", "inf_in_list", "int_key", "too_deep"],
)
def test_task_params_hold_only_plain_finite_data(params: dict) -> None:
    node = realistic_turn_node("r1", 1, action_tokens=1)
    body = _body(node)
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(node, {**body, "task": {**body["task"], "params": params}}))
    assert err.value.reason == "schema_violation" and "params" in err.value.detail
    with pytest.raises(ValueError, match="params"):
        TaskSpec(env="e", task_id="t", params=params)


def test_work_items_and_trees_name_their_allocator_shard_since_their_last_version() -> None:
    """Version 1 work items and version 2 trees had no shard: refused, not read as shard 0."""
    item = next(m for m in sample_messages("r1") if isinstance(m, WorkItem))
    sharded = replace(item, shard=3)
    assert decode(encode(sharded), WorkItem).shard == 3
    old_item = {k: v for k, v in _body(item).items() if k != "shard"}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(item, old_item, version=1), WorkItem)
    assert err.value.reason == "unsupported_version"
    tree = _completed_tree()
    assert (tree.shard, tree.shard_count) == (0, 1)
    old_tree = {k: v for k, v in _body(tree).items() if k not in ("shard", "shard_count")}
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(tree, old_tree, version=2), CompletedTree)
    assert err.value.reason == "unsupported_version"
    with pytest.raises(ProtocolError) as err:
        decode(_envelope(tree, {**_body(tree), "shard": 2, "shard_count": 2}), CompletedTree)
    assert err.value.reason == "schema_violation"
    with pytest.raises(ValueError):
        replace(tree, shard=1)
