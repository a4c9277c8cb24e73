"""Append-only JSONL metrics, one file per role in the run directory.

Each record is one flat JSON object with ``time`` and ``role``; readers (the live view of
``tracerl up``, the PNG report, the benchmarks) only ever parse these files, so roles on
other hosts can report by writing the same format to a shared directory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def metrics_path(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / "metrics" / f"{role}.jsonl"


class MetricsWriter:
    def __init__(self, run_dir: str | Path, role: str) -> None:
        self.role = role
        self.path = metrics_path(run_dir, role)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)  # line-buffered: readers see whole records

    def write(self, record: dict[str, Any], now: float | None = None) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        clean.setdefault("time", time.time() if now is None else now)
        clean.setdefault("role", self.role)
        self._file.write(json.dumps(clean, sort_keys=True) + "\n")

    def close(self) -> None:
        self._file.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null keeps the line parseable everywhere
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records in order; a torn last line (a writer killed mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
