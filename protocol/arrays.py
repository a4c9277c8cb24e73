"""Token ids and logprobs as packed arrays: in memory, and as one msgpack binary on the wire.

They are most of every payload. Packed, a 300-token node stays at a few kilobytes, and
decoding an array is one memcpy into an ``array.array`` instead of a Python object per value.

A message field declared ``Int32Array`` or ``Float32Array`` may be given any sequence of
numbers (a list, say): the message stores it packed (``pack_fields``). ``Float32Array``
rounds each value to the nearest float32 (beyond its range: to +-inf); use it only where
the source is float32 anyway, so nothing is lost (vLLM's logprobs are).
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    # To the type checker a field is the sequence a sender may give; at run time it is packed.
    Int32Array = Sequence[int]
    Float32Array = Sequence[float]
else:

    class Int32Array(array.array):
        """int32 values (array typecode ``i``)."""

        __slots__ = ()

        def __new__(cls, values: Iterable[int] = ()) -> Int32Array:
            return super().__new__(cls, "i", values)

    class Float32Array(array.array):
        """float32 values (array typecode ``f``)."""

        __slots__ = ()

        def __new__(cls, values: Iterable[float] = ()) -> Float32Array:
            return super().__new__(cls, "f", values)


PACKED_TYPES: tuple[Any, ...] = (Int32Array, Float32Array)


def pack_fields(message: msgspec.Struct, fields: dict[str, type[Any]]) -> None:
    """Store each named field of a freshly built ``message`` as its packed type.

    A decoded message holds packed arrays already and skips the copy.
    """
    for name, packed in fields.items():
        value = getattr(message, name)
        if type(value) is not packed:
            msgspec.structs.force_setattr(message, name, packed(value))


def enc_hook(value: Any) -> Any:
    """A packed array travels as its raw bytes (native byte order: every host here is little-endian)."""
    if isinstance(value, array.array):
        return memoryview(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def dec_hook(expected: type[Any], value: Any) -> Any:
    """Rebuild a packed array from its bytes; anything else is a schema violation."""
    if expected in PACKED_TYPES:
        if not isinstance(value, bytes):
            raise TypeError(f"expected a packed array, got {type(value).__name__}")
        packed = expected()
        if len(value) % packed.itemsize:
            raise ValueError(f"packed array of {len(value)} bytes is not a multiple of {packed.itemsize}")
        packed.frombytes(value)
        return packed
    raise NotImplementedError(f"cannot decode {expected.__name__}")
