"""Checking a published weights blob before it goes anywhere near the engine.

A blob is accepted only if its sha256 and size match the announcement and its tensors have
exactly the names, dtypes and shapes of the model the engine serves: a layerwise in-place
reload of a mismatched checkpoint would leave a half-updated or broken policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from protocol.messages import WeightsAnnouncement

TensorSignature = dict[str, tuple[str, tuple[int, ...]]]

WEIGHTS_FILE = "model.safetensors"
# Files the engine's loader may consult next to the weights.
_COMPANION_FILES = ("config.json", "generation_config.json")


class WeightsError(ValueError):
    """A blob that must not be loaded; ``reason`` is a short category for logs and counters."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def safetensors_signature(blob: bytes | bytearray) -> TensorSignature:
    """Tensor name -> (dtype, shape) from a safetensors header, checking the data extents."""
    if len(blob) < 8:
        raise WeightsError("malformed", "shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise WeightsError("malformed", f"header length {header_len} exceeds the blob")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError("malformed", f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise WeightsError("malformed", "header is not a mapping")
    data_len = len(blob) - 8 - header_len
    signature: TensorSignature = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsError("malformed", f"tensor {name!r} has a bad entry ({err})") from None
        if not 0 <= start <= end <= data_len:
            raise WeightsError("malformed", f"tensor {name!r} lies outside the data")
        signature[name] = (str(dtype), shape)
    return signature


def model_dir_signature(model_dir: str | Path) -> TensorSignature:
    """The signature of every safetensors shard in a model directory (headers only are read)."""
    signature: TensorSignature = {}
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise WeightsError("no_reference", f"no .safetensors files in {model_dir}")
    for shard in shards:
        with shard.open("rb") as f:
            head = f.read(8)
            (header_len,) = struct.unpack("<Q", head)
            header = f.read(header_len)
        for name, info in json.loads(header).items():
            if name != "__metadata__":
                signature[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
    return signature


def signature_mismatch(expected: TensorSignature, got: TensorSignature) -> str | None:
    """A one-line description of how ``got`` differs from ``expected``, or None if it does not."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        return f"missing tensors {missing[:5]}, unexpected tensors {extra[:5]}"
    for name, spec in expected.items():
        if got[name] != spec:
            return f"tensor {name!r} is {got[name]}, the model has {spec}"
    return None


def verify_blob(blob: bytes | bytearray, announcement: WeightsAnnouncement, reference: TensorSignature) -> None:
    if announcement.format != "safetensors":
        raise WeightsError("unsupported_format", announcement.format)
    if len(blob) != announcement.num_bytes:
        raise WeightsError("size_mismatch", f"{len(blob)} bytes, announced {announcement.num_bytes}")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != announcement.sha256:
        raise WeightsError("sha256_mismatch", f"got {digest[:16]}…, announced {announcement.sha256[:16]}…")
    mismatch = signature_mismatch(reference, safetensors_signature(blob))
    if mismatch:
        raise WeightsError("shape_mismatch", mismatch)


async def fetch_verified(
    get_object: Callable[[str], Awaitable[bytes]],
    announcement: WeightsAnnouncement,
    reference: TensorSignature,
    timeout_s: float,
) -> bytes:
    """The announced blob, read within ``timeout_s`` and verified; every failure is a
    ``WeightsError`` (``fetch_timeout``, ``fetch_failed`` or a ``verify_blob`` reason)."""
    try:
        blob = await asyncio.wait_for(get_object(announcement.object_name), timeout_s)
    except TimeoutError:
        raise WeightsError("fetch_timeout", f"{announcement.object_name} not read within {timeout_s:g} s") from None
    except Exception as err:  # noqa: BLE001 - a missing object, a dropped connection, a purged chunk
        raise WeightsError("fetch_failed", f"{announcement.object_name}: {err!r}") from None
    verify_blob(blob, announcement, reference)
    return blob


def write_version_dir(
    blob: bytes | bytearray, model_dir: str | Path, weights_root: str | Path, policy_version: int
) -> Path:
    """Write a verified blob as a loadable directory; written aside, then renamed, so never half-present."""
    root = Path(weights_root)
    target = root / f"v{policy_version}"
    staging = root / f".v{policy_version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / WEIGHTS_FILE).write_bytes(blob)
    for name in _COMPANION_FILES:
        source = Path(model_dir) / name
        if source.is_file():
            shutil.copy2(source, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def prune_versions(weights_root: str | Path, keep: set[int]) -> None:
    """Delete downloaded versions other than ``keep`` (the served one and the newest)."""
    for path in Path(weights_root).glob("v*"):
        suffix = path.name[1:]
        if suffix.isdigit() and int(suffix) not in keep:
            shutil.rmtree(path, ignore_errors=True)
