"""On-disk cache of built model directories, keyed by a content hash of everything that shapes them.

A build writes into a temporary sibling directory and renames it into place, so a reader
never sees a half-written model and two concurrent builders of the same key both end up
with one complete directory (the loser discards its copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

CACHE_DIR_ENV = "TRACERL_CACHE_DIR"
#: Written last inside a build; its presence marks a directory as complete.
COMPLETE_MARKER = "build-info.json"


def cache_root(override: str = "") -> Path:
    """``override`` if given, else ``$TRACERL_CACHE_DIR``, else ``~/.cache/tracerl/models``."""
    if override:
        return Path(override).expanduser()
    from_env = os.environ.get(CACHE_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "tracerl" / "models"


def content_key(payload: Any) -> str:
    """A short stable hash of plain data, structs or dataclasses (key order does not matter)."""
    canonical = json.dumps(_builtins(payload), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _builtins(data: Any) -> Any:
    # What JSON has no type for is named by its ``str`` (bytes too, as json's ``default=str`` did).
    return msgspec.to_builtins(data, builtin_types=(bytes, bytearray), enc_hook=str)


def cached_directory(root: Path, name: str, key: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
    """Return ``(root/name-key, built_now)``, running ``build(tmp_dir)`` only on a miss.

    ``build`` fills the directory and returns facts about the build, stored in the marker.
    """
    target = root / f"{name}-{key}"
    if (target / COMPLETE_MARKER).is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}-", dir=root))
    try:
        info = build(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"key": key, **_builtins(info)}, indent=2, sort_keys=True))
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # debris of an interrupted build from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():
                raise
            return target, False  # another process finished the same build first
        return target, True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_fingerprint(model_dir: Path) -> str:
    """A cheap identity of a model directory's current contents: every file's name, size and
    modification time (hashing the weights themselves would cost minutes for a large model)."""
    entries = sorted(
        (str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns)
        for path in Path(model_dir).rglob("*")
        if path.is_file() and (stat := path.stat())
    )
    return content_key({"model": str(Path(model_dir).resolve()), "files": entries})


def source_fingerprint(paths: list[Path]) -> str:
    """A hash of source files: a cached result computed by older code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
