"""msgpack encoding with a schema name and version, and validation on decode.

Any failure to decode — truncated bytes, wrong schema, unknown version, missing or extra
field, wrong type, oversized payload, a message of another run — raises ``ProtocolError``
and nothing else, so a consumer needs exactly one ``except`` to reject a bad message and
keep serving.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .arrays import dec_hook, enc_hook
from .messages import MESSAGE_TYPES

DEFAULT_MAX_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``reason`` is a short machine-friendly category."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class _Envelope(msgspec.Struct, frozen=True):
    schema: str
    version: int
    body: Any


class _ReceivedEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exactly schema, version and body; the body is decoded once its schema is known, and
    schema and version are judged by ``decode`` so that each mismatch has its own reason."""

    schema: Any
    version: Any
    body: msgspec.Raw


_encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
_envelope_decoder = msgspec.msgpack.Decoder(_ReceivedEnvelope)
_body_decoders = {schema: msgspec.msgpack.Decoder(cls, dec_hook=dec_hook) for schema, cls in MESSAGE_TYPES.items()}


def encode(message: Any) -> bytes:
    cls = type(message)
    if getattr(cls, "SCHEMA", None) not in MESSAGE_TYPES:
        raise TypeError(f"{cls.__name__} is not a protocol message")
    return _encoder.encode(_Envelope(cls.SCHEMA, cls.SCHEMA_VERSION, message))


def plain_body(message: Any) -> dict[str, Any]:
    """A message's body as the plain msgpack data a receiver sees (packed arrays as bytes)."""
    body: dict[str, Any] = msgspec.msgpack.decode(encode(message))["body"]
    return body


def _violation(schema: str, error: str) -> str:
    """msgspec's "<what> - at `$.a.b`" as "<schema>.a.b: <what>", naming a missing field too."""
    what, at, path = error.rpartition(" - at `$")
    if not at:
        what, path = error, ""
    path = path.rstrip("`")
    missing = _MISSING_FIELD.match(what)
    if missing:
        path = f"{path}.{missing[1]}"
    return f"{schema}{path}: {what}"


_MISSING_FIELD = re.compile(r"Object missing required field `(\w+)`")


def decode(
    payload: bytes, expected: type[T] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES, run_id: str | None = None
) -> T:
    """Decode and validate one message; ``expected`` pins the message type for a subject.

    ``run_id`` pins the run: subjects are scoped by run id, but a client allowed on them
    can still publish a well-formed message of another run, which must not be mixed in.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError("not_bytes", f"payload is {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise ProtocolError("oversized", f"{len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        envelope = _envelope_decoder.decode(payload)
    except msgspec.ValidationError:
        raise ProtocolError("bad_envelope", "expected a map with exactly schema, version and body") from None
    except msgspec.DecodeError as err:
        raise ProtocolError("malformed", f"not valid msgpack ({err})") from None
    schema, version = envelope.schema, envelope.version
    cls = MESSAGE_TYPES.get(schema) if isinstance(schema, str) else None
    if cls is None:
        raise ProtocolError("unknown_schema", f"unknown schema {schema!r}")
    if expected is not None and cls is not expected:
        raise ProtocolError("wrong_schema", f"expected {expected.SCHEMA!r}, got {schema!r}")  # type: ignore[attr-defined]
    if type(version) is not int or version != cls.SCHEMA_VERSION:
        raise ProtocolError(
            "unsupported_version", f"{schema} version {version!r} (this build speaks {cls.SCHEMA_VERSION})"
        )
    try:
        message = _body_decoders[schema].decode(envelope.body)
    except msgspec.DecodeError as err:  # a ValidationError, or a body that is not one msgpack value
        raise ProtocolError("schema_violation", _violation(schema, str(err))) from None
    if run_id is not None and message.run_id != run_id:
        raise ProtocolError("wrong_run", f"{schema} of run {message.run_id!r}, expected {run_id!r}")
    decoded: T = message
    return decoded
