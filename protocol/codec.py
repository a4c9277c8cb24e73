"""msgpack encoding with a schema name and version, and validation on decode.

Any failure to decode — truncated bytes, wrong schema, unknown version, missing or extra
field, wrong type, oversized payload, a message of another run — raises ``ProtocolError``
and nothing else, so a consumer needs exactly one ``except`` to reject a bad message and
keep serving.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from tracerl.typed import SchemaError, from_plain, to_plain

from .messages import MESSAGE_TYPES

DEFAULT_MAX_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``reason`` is a short machine-friendly category."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def encode(message: Any) -> bytes:
    cls = type(message)
    if getattr(cls, "SCHEMA", None) not in MESSAGE_TYPES:
        raise TypeError(f"{cls.__name__} is not a protocol message")
    envelope = {"schema": cls.SCHEMA, "version": cls.SCHEMA_VERSION, "body": to_plain(message)}
    payload: bytes = msgpack.packb(envelope, use_bin_type=True)
    return payload


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
        envelope = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as err:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        raise ProtocolError("malformed", f"not valid msgpack ({type(err).__name__}: {err})") from None
    if not isinstance(envelope, dict) or set(envelope) != {"schema", "version", "body"}:
        raise ProtocolError("bad_envelope", "expected a map with exactly schema, version and body")
    schema, version = envelope["schema"], envelope["version"]
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
        message = from_plain(cls, envelope["body"])
    except SchemaError as err:
        raise ProtocolError("schema_violation", f"{schema}.{err}") from None
    if run_id is not None and message.run_id != run_id:
        raise ProtocolError("wrong_run", f"{schema} of run {message.run_id!r}, expected {run_id!r}")
    decoded: T = message
    return decoded
