"""Reading users' JSONL dataset files: every bad line is an error naming the file and the line."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from .base import EnvironmentError_
from .splits import check_split, split_of_content

T = TypeVar("T")


def json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EnvironmentError_(f"{path}: cannot read: {err}") from err
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EnvironmentError_(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise EnvironmentError_(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def built_from_file(path: str, what: str, build: Callable[[str], T]) -> T:
    """``build(resolved path)``, built once per version of the file: every environment step may
    ask for it, and it is rebuilt only when the file's modification time or size changes.
    ``what`` names the file in the error when it cannot be read."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as err:
        raise EnvironmentError_(f"{path}: cannot read {what}: {err}") from err
    return _built(build, str(resolved), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _built(build: Callable[[str], T], path: str, mtime_ns: int, size: int) -> T:
    return build(path)


def string_field(path: Path, number: int, record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EnvironmentError_(f"{path}:{number}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def sample_split(
    env_name: str,
    split: str,
    count: int,
    seed: int,
    files: tuple[str, str],
    load: Callable[[str], list[T]],
    key: Callable[[T], str],
) -> list[T]:
    """``count`` records of ``split`` sampled (seeded, without replacement) from ``files``, the
    (train, held-out) pair; see ``split_records`` for how the splits are kept apart."""
    chosen = split_records(split, *files, load, key)
    if count > len(chosen):
        raise ValueError(f"asked for {count} {split} records but only {len(chosen)} are available")
    return random.Random(f"{env_name}:{split}:{seed}").sample(chosen, count)


def split_records(
    split: str, train_file: str, heldout_file: str, load: Callable[[str], list[T]], key: Callable[[T], str]
) -> list[T]:
    """The records of ``split``, none of which the other split has (records with equal ``key``
    count as one; the first is kept).

    Each split reads its own file, and a held-out record whose key the training file also has
    is dropped. When both name the same file, a stable hash of each key decides the record's
    split, as for generated tasks.
    """
    check_split(split)
    if not train_file or not heldout_file:
        raise ValueError("need both train_file and heldout_file (they may name the same file)")
    if Path(train_file).resolve() == Path(heldout_file).resolve():
        records = [r for r in load(train_file) if split_of_content(key(r)) == split]
    elif split == "train":
        records = load(train_file)
    else:
        train_keys = {key(r) for r in load(train_file)}
        records = [r for r in load(heldout_file) if key(r) not in train_keys]
    unique: dict[str, T] = {}
    for record in records:
        unique.setdefault(key(record), record)
    return list(unique.values())
