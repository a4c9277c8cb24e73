"""One policy version as a broadcast: a fixed-size header, then the weights in flat byte buckets (pure).

The broadcast carries the bytes the object store holds: the learner's safetensors blob,
cut into buckets of at most ``bucket_bytes`` that are broadcast one after another. The
header carries the version's ``WeightsAnnouncement`` (version, size, sha256), the one the
object-store path announces, so a member checks exactly what an object-store reader
checks (``actors.weights.verify_blob``) before anything is loaded. A header of kind
``CLOSE`` ends the group's epoch: its members go back to watching for the next one.

Every collective has a fixed size known to both sides beforehand: the header is
``HEADER_BYTES``, and the buckets follow from the announced size and the group's
``bucket_bytes``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import torch

from protocol import ProtocolError, WeightsAnnouncement, decode, encode

HEADER_BYTES = 4096
# Bumped whenever the header's layout changes; a member refuses a header it does not know.
FRAME_SCHEMA_VERSION = 1
_MAGIC = b"TRWB"
# magic, frame schema version, kind, payload length
_PREFIX = struct.Struct("<4sHHI")


class FrameKind(IntEnum):
    VERSION = 1
    CLOSE = 2


class FrameError(ValueError):
    """A header a member cannot use; the group is then left (the object store still has the version)."""


@dataclass(frozen=True)
class Header:
    kind: FrameKind
    # Set for VERSION headers: what the buckets that follow must add up to.
    announcement: WeightsAnnouncement | None = None


def bucket_spans(num_bytes: int, bucket_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) of each bucket: full buckets of ``bucket_bytes``, the last one shorter."""
    if num_bytes < 0 or bucket_bytes < 1:
        raise ValueError(f"num_bytes must be >= 0 and bucket_bytes >= 1, got {num_bytes}, {bucket_bytes}")
    return [(start, min(start + bucket_bytes, num_bytes)) for start in range(0, num_bytes, bucket_bytes)]


def bucket_views(flat: torch.Tensor, bucket_bytes: int) -> list[torch.Tensor]:
    """Views (no copies) of a flat uint8 tensor, one per bucket, each contiguous."""
    if flat.dtype != torch.uint8 or flat.dim() != 1:
        raise ValueError(f"expected a flat uint8 tensor, got {flat.dtype} with shape {tuple(flat.shape)}")
    return [flat[start:stop] for start, stop in bucket_spans(flat.numel(), bucket_bytes)]


def flat_bytes(buffer: bytes | bytearray) -> torch.Tensor:
    """A flat uint8 tensor over ``buffer``'s memory (no copy). Torch warns that immutable
    ``bytes`` are not writable; the learner's blob is only read (a broadcast's root sends it)."""
    if isinstance(buffer, bytearray):
        return torch.frombuffer(buffer, dtype=torch.uint8)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return torch.frombuffer(buffer, dtype=torch.uint8)


def encode_header(kind: FrameKind, announcement: WeightsAnnouncement | None = None) -> bytes:
    """``HEADER_BYTES`` bytes: the prefix, the encoded announcement (VERSION only), zero padding."""
    if (kind is FrameKind.VERSION) != (announcement is not None):
        raise ValueError("a VERSION header carries an announcement, a CLOSE header none")
    payload = encode(announcement) if announcement is not None else b""
    if _PREFIX.size + len(payload) > HEADER_BYTES:
        raise ValueError(f"announcement of {len(payload)} bytes does not fit a {HEADER_BYTES}-byte header")
    head = _PREFIX.pack(_MAGIC, FRAME_SCHEMA_VERSION, int(kind), len(payload)) + payload
    return head + bytes(HEADER_BYTES - len(head))


def decode_header(raw: bytes | bytearray, run_id: str) -> Header:
    """The header a member received; its announcement is decoded as strictly as one from the KV."""
    if len(raw) != HEADER_BYTES:
        raise FrameError(f"header of {len(raw)} bytes, expected {HEADER_BYTES}")
    magic, schema_version, kind, length = _PREFIX.unpack_from(raw)
    if magic != _MAGIC:
        raise FrameError(f"not a weights frame (magic {magic!r})")
    if schema_version != FRAME_SCHEMA_VERSION:
        raise FrameError(f"frame schema version {schema_version}, this actor knows {FRAME_SCHEMA_VERSION}")
    if kind not in {k.value for k in FrameKind}:
        raise FrameError(f"unknown frame kind {kind}")
    if _PREFIX.size + length > HEADER_BYTES:
        raise FrameError(f"payload length {length} overruns the header")
    if FrameKind(kind) is FrameKind.CLOSE:
        return Header(FrameKind.CLOSE)
    try:
        announcement = decode(bytes(raw[_PREFIX.size : _PREFIX.size + length]), WeightsAnnouncement, run_id=run_id)
    except ProtocolError as err:
        raise FrameError(f"announcement refused: {err}") from None
    return Header(FrameKind.VERSION, announcement)
