"""Append-only JSONL metrics, one file per role in the run directory, mirrored as scalars.

Each record is one flat JSON object with ``time`` and ``role``; readers (the live view of
``tracerl up``, the PNG report, the benchmarks) only ever parse these files, so roles on
other hosts can report by writing the same format to a shared directory.

A role's metrics writer (``role_metrics``) also hands every numeric field of every record to
scalar sinks: TensorBoard event files under ``<run_dir>/tb/<role>/`` (so ``tensorboard --logdir
runs/`` shows runs live) and, when asked for, W&B. The JSONL file stays the record of truth: a
sink that fails is reported once and dropped, and the role goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from tracerl.config import LogConfig, RunConfig
from tracerl.logs import get_logger

log = get_logger(__name__)

#: The field a record's own wall time is in; the scalar sinks carry it as their event time.
TIME_FIELD = "time"
#: Where a W&B run keeps the step of every logged row, so its charts share the TensorBoard x-axis.
WANDB_STEP = "step"


def metrics_path(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / "metrics" / f"{role}.jsonl"


def tensorboard_dir(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / "tb" / role


def scalar_fields(record: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric field of ``record`` as a float, keyed by its record key.

    Flags (bools) are states, not measurements, and ``time`` is the event's own time, so
    neither becomes a scalar. NaN and infinities stay: a NaN loss is worth seeing.
    """
    scalars: dict[str, float] = {}
    for key, value in record.items():
        value = _item(value)
        if key == TIME_FIELD or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        scalars[key] = float(value)
    return scalars


def scalar_step(record: Mapping[str, Any], step_key: str | None, previous: int) -> int:
    """The x-axis position of ``record``, given the ``previous`` record's.

    With a ``step_key`` it is the record's value there; a record without one (a final record,
    a held-out result) sits at the previous step. Without a ``step_key`` each record is one
    step on: the step counts records.
    """
    if step_key is None:
        return previous + 1
    value = _item(record.get(step_key))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return previous
    return int(value)


class ScalarSink(Protocol):
    name: str

    def add(self, scalars: Mapping[str, float], step: int, wall_time: float) -> None: ...

    def close(self) -> None: ...


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 <= q <= 1) of ``values``; nan for none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class LatencyWindow:
    """Durations seen since the last summary, reported as count, p50, p99 and max.

    Reset at every summary, so each metrics record describes its own interval; the samples
    of one interval are kept (at most ``max_samples``, the latest) so the quantiles are exact.
    """

    def __init__(self, max_samples: int = 100_000) -> None:
        self.max_samples = max_samples
        self.samples: list[float] = []
        self.count = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.samples.append(seconds)
        if len(self.samples) > 2 * self.max_samples:  # trimmed in bulk: one copy per max_samples adds
            del self.samples[: -self.max_samples]

    def summary(self, prefix: str, scale: float = 1.0) -> dict[str, float]:
        """``{prefix}.count/p50/p99/max`` over the interval, in seconds times ``scale``; then reset."""
        window = self.samples[-self.max_samples :]
        record = {
            f"{prefix}.count": float(self.count),
            f"{prefix}.p50": percentile(window, 0.50) * scale,
            f"{prefix}.p99": percentile(window, 0.99) * scale,
            f"{prefix}.max": (max(window) if window else math.nan) * scale,
        }
        self.samples, self.count = [], 0
        return record


class MetricsWriter:
    """One role's metrics: a JSONL line per record, plus each record's scalars to ``sinks``.

    ``step_key`` names the record field that is the scalars' step (see ``scalar_step``).
    The step goes on from the records already in the file, so a restarted role continues
    along the same axis rather than drawing over its past from step 0.
    """

    def __init__(
        self, run_dir: str | Path, role: str, *, step_key: str | None = None, sinks: Sequence[ScalarSink] = ()
    ) -> None:
        self.role = role
        self.path = metrics_path(run_dir, role)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.step_key = step_key
        self.sinks = list(sinks)
        self.step = 0
        if self.sinks:
            for earlier in read_metrics(self.path):
                self.step = scalar_step(earlier, step_key, self.step)
        self._file = self.path.open("a", buffering=1)  # line-buffered: readers see whole records

    def write(self, record: dict[str, Any], now: float | None = None) -> None:
        wall_time = time.time() if now is None else now
        clean = {k: _jsonable(v) for k, v in record.items()}
        clean.setdefault(TIME_FIELD, wall_time)
        clean.setdefault("role", self.role)
        self._file.write(json.dumps(clean, sort_keys=True) + "\n")
        if self.sinks:
            self.step = scalar_step(record, self.step_key, self.step)
            self._to_sinks(scalar_fields(record), wall_time)

    def _to_sinks(self, scalars: dict[str, float], wall_time: float) -> None:
        for sink in list(self.sinks):
            try:
                sink.add(scalars, self.step, wall_time)
            except Exception as err:  # noqa: BLE001 - no sink may stop a role; the JSONL line is written
                self._drop(sink, err)

    def _drop(self, sink: ScalarSink, err: Exception) -> None:
        self.sinks.remove(sink)
        _report_sink_failure(sink.name, self.role, err)
        with contextlib.suppress(Exception):  # already reported; a broken sink may fail to close too
            sink.close()

    def close(self) -> None:
        self._file.close()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001 - closing must not stop a role's shutdown
                _report_sink_failure(sink.name, self.role, err)


_event_files = itertools.count()  # two files opened by one process in one second get different names


class TensorBoardSink:
    """Scalars as TensorBoard events in one event file per writer, written synchronously.

    Records come at most every few seconds, so each is flushed at once (TensorBoard shows it
    live) and an error surfaces in the caller, not in a background thread. Only the
    ``tensorboard`` package is needed: no framework is imported into roles without one.
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = event_pb2.Event
        self._summary = summary_pb2.Summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads every file named *tfevents* in a directory, so a restarted role
        # adds a file next to the old one and both show as one run.
        self.path = log_dir / (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_event_files)}"
        )
        self._records = RecordWriter(self.path.open("wb"))
        self._emit(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, scalars: Mapping[str, float], step: int, wall_time: float) -> None:
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()])
        self._emit(self._event(wall_time=wall_time, step=step, summary=summary))

    def _emit(self, event: Any) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class WandbSink:
    """Scalars as rows of one W&B run per role, grouped by run id.

    Offline unless ``WANDB_MODE`` says otherwise, so a role never waits on the network;
    ``wandb sync <run_dir>/wandb/offline-run-*`` uploads afterwards.
    """

    name = "wandb"

    def __init__(self, run_dir: str | Path, run_id: str, role: str) -> None:
        import wandb

        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tracerl"),
            group=run_id,
            name=f"{run_id}/{role}",
            job_type=role,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )
        self._run.define_metric(WANDB_STEP)
        self._run.define_metric("*", step_metric=WANDB_STEP)

    def add(self, scalars: Mapping[str, float], step: int, wall_time: float) -> None:
        self._run.log({**scalars, WANDB_STEP: step})

    def close(self) -> None:
        self._run.finish()


def role_metrics(run: RunConfig, logging: LogConfig, role: str, *, step_key: str | None = None) -> MetricsWriter:
    """The metrics writer of a role: JSONL, TensorBoard under ``tb/<role>/`` and, if asked, W&B.

    A sink that cannot start is reported and left out; the role runs on with the others.
    """
    openers: dict[str, Callable[[], ScalarSink]] = {
        TensorBoardSink.name: lambda: TensorBoardSink(tensorboard_dir(run.run_dir, role)),
    }
    if logging.wandb:
        openers[WandbSink.name] = lambda: WandbSink(run.run_dir, run.run_id, role)
    sinks = []
    for name, opener in openers.items():
        try:
            sinks.append(opener())
        except Exception as err:  # noqa: BLE001 - metrics go on in JSONL
            _report_sink_failure(name, role, err)
    return MetricsWriter(run.run_dir, role, step_key=step_key, sinks=sinks)


def _report_sink_failure(sink: str, role: str, err: Exception) -> None:
    log.error("metrics_sink_failed", sink=sink, metrics=role, error=repr(err), note="metrics go on in JSONL only")


def _item(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def _jsonable(value: Any) -> Any:
    value = _item(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null keeps the line parseable everywhere
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
