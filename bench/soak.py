"""`tracerl bench soak`: the whole system (bus, learner, allocator, actors) runs for a fixed time
while the harness samples, every ``interval_s``:

- each role's resident memory, open file descriptors and process count, summed over the
  role's process and its descendants (an actor's vLLM engine, the bus's nats-server);
- the JetStream store: each stream's stored message bytes as the server accounts them
  (monitoring endpoint ``/jsz``), which retention bounds, and each stream's directory on
  disk, which also holds deleted messages until their file block empties, and the run's
  other files (logs, metrics, checkpoints; reported only);
- the learner's step, so a stalled run cannot pass for a steady one.

The soak's minutes and its warm-up count from the learner's first step, so a slow start-up
(engines compiling on a loaded machine) is neither soak time nor growth. After the warm-up,
each series' growth per hour is the Theil-Sen slope of its samples: the median of the slopes
between every pair of them, over the whole window and over its later half; the smaller of the
two, the growth still going at the end, is what is judged. Memory that settles in one step (an allocator's arena growing
once, an engine warming a cache, minutes into a run on a loaded machine) moves the
least-squares line by the whole step over a short window; it moves the median of the
pairwise slopes hardly at all, while a steady leak, smooth or one step per learner step,
moves both alike.
The verdict, judged by slope relative to level and never by an absolute figure:

- memory and descriptors: no role grows by more than ``max_relative_growth_per_hour`` of
  its own level per hour;
- the streams bounded by retention alone (work queue, weights, run state): the same test,
  with a level of at least ``STREAM_LEVEL_FLOOR``: relative to the few kilobytes a work
  queue holds, its coming and going would read as growth;
- the streams with a byte cap (nodes, trees, dead letters): at or below the cap, with the
  time left until the cap at the measured rate written down;
- the learner kept taking steps after the warm-up, no role exited during the soak, and
  every role stopped cleanly at its end.

The growth arithmetic and the verdict are pure functions; ``run_soak`` is the shell.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median
from typing import Any

from bench.harness import SMALL_RUN, BenchRun, bench_up_config, fresh_run_dir
from protocol import Subjects
from tracerl.logs import get_logger

log = get_logger(__name__)

SECONDS_PER_HOUR = 3600.0
#: A slope from fewer points after the warm-up says nothing.
MIN_POINTS = 3
MARKER = ".bench-soak"

MEMORY, DESCRIPTORS, PROCESSES, STREAM, DISK, STEPS = (
    "rss_bytes",
    "open_fds",
    "processes",
    "stream_bytes",
    "disk_bytes",
    "learner_step",
)
#: The level below which a stream's growth is judged as if it held this much: one file-store block.
STREAM_LEVEL_FLOOR = 8 * 2**20
#: Streams whose size only retention bounds: judged by slope, like memory.
RETENTION_BOUNDED = ("work", "weights", "state")
#: Streams with a byte cap in ``bus.streams``: judged against it.
CAPPED = {"nodes": "nodes_max_bytes", "trees": "trees_max_bytes", "dead_letter": "dead_letter_max_bytes"}

# The benches' small run, trained without end: the soak stops it when its time is up.
SOAK_RUN: dict[str, Any] = {**SMALL_RUN, "run.run_id": "soak"}
FORCED = ("learner.training.max_steps=0", "allocator.max_steps=0", "eval_tasks=0")


# ---------------------------------------------------------------------------- growth


#: Above this many points the pairwise slopes are taken over every k-th one (k as small as fits).
MAX_SLOPE_POINTS = 1500


def theil_sen_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The median of the slopes between every pair of points with distinct xs (Theil-Sen)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("a slope needs at least two points, as many xs as ys")
    stride = math.ceil(len(xs) / MAX_SLOPE_POINTS)
    points = sorted(zip(xs[::stride], ys[::stride], strict=True))
    slopes = [
        (y_j - y_i) / (x_j - x_i) for i, (x_i, y_i) in enumerate(points) for x_j, y_j in points[i + 1 :] if x_j != x_i
    ]
    if not slopes:
        raise ValueError("a slope needs at least two distinct xs")
    return median(slopes)


@dataclass(frozen=True)
class Growth:
    """One series after the warm-up: its mean level and its Theil-Sen growth per hour, over the
    whole window and over its later half."""

    series: str
    points: int
    level: float
    last: float
    per_hour: float
    # None: too few points in the later half to say.
    later_half_per_hour: float | None = None

    @property
    def lasting_per_hour(self) -> float:
        """The growth that is still going at the end: the smaller of the whole window's and the
        later half's. A leak reads the same over both; memory that settled inside the window
        reads lower over the later half; growth that began late reads lower over the whole."""
        if self.later_half_per_hour is None:
            return self.per_hour
        return min(self.per_hour, self.later_half_per_hour)

    @property
    def relative_per_hour(self) -> float:
        """Lasting growth per hour as a fraction of the level (infinite for growth from nothing)."""
        if self.level > 0:
            return self.lasting_per_hour / self.level
        return 0.0 if self.lasting_per_hour == 0 else math.copysign(math.inf, self.lasting_per_hour)


def growth_after_warmup(series: str, points: Sequence[tuple[float, float]], warmup_s: float) -> Growth | None:
    """The growth of ``(seconds, value)`` points taken at or after ``warmup_s``; None with too few."""
    kept = [(t, v) for t, v in points if t >= warmup_s]
    if len(kept) < MIN_POINTS or len({t for t, _ in kept}) < 2:
        return None
    ts, vs = [t for t, _ in kept], [v for _, v in kept]
    later = kept[len(kept) // 2 :]
    return Growth(
        series=series,
        points=len(kept),
        level=fmean(vs),
        last=vs[-1],
        per_hour=theil_sen_slope(ts, vs) * SECONDS_PER_HOUR,
        later_half_per_hour=(
            theil_sen_slope([t for t, _ in later], [v for _, v in later]) * SECONDS_PER_HOUR
            if len({t for t, _ in later}) >= 2
            else None
        ),
    )


def relative_growth(growth: Growth, level_floor: float = 0.0) -> float:
    """Growth per hour relative to the level, or to ``level_floor`` when the level is below it."""
    if level_floor > growth.level:
        return growth.lasting_per_hour / level_floor
    return growth.relative_per_hour


def hours_to_cap(growth: Growth, cap: float) -> float | None:
    """At the measured rate, hours until the series reaches ``cap`` (None if it does not grow)."""
    if growth.per_hour <= 0:
        return None
    return max(0.0, (cap - growth.last) / growth.per_hour)


# ---------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    at_s: float  # seconds since the roles started
    values: dict[str, float]


def series_points(samples: Iterable[Sample], name: str) -> list[tuple[float, float]]:
    return [(s.at_s, s.values[name]) for s in samples if name in s.values]


def series_names(samples: Iterable[Sample]) -> list[str]:
    return sorted({name for s in samples for name in s.values})


def series_kind(name: str) -> str:
    return name.split(".", 1)[0]


# ---------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class SeriesVerdict:
    growth: Growth
    judged_by: str  # "slope", "cap" or "" (reported only)
    ok: bool
    # The growth per hour relative to the level the slope was judged against.
    relative_per_hour: float | None = None
    cap: int | None = None
    hours_to_cap: float | None = None


def judge_series(growth: Growth, max_relative_per_hour: float, caps: Mapping[str, int]) -> SeriesVerdict:
    """Memory, descriptors and retention-bounded streams by slope; capped streams by their cap."""
    kind = series_kind(growth.series)
    stream = growth.series.split(".", 1)[1] if "." in growth.series else ""
    if kind in (MEMORY, DESCRIPTORS) or (kind == STREAM and stream in RETENTION_BOUNDED):
        floor = STREAM_LEVEL_FLOOR if kind == STREAM else 0.0
        relative = relative_growth(growth, floor)
        return SeriesVerdict(growth, "slope", relative <= max_relative_per_hour, relative_per_hour=relative)
    if kind == STREAM and stream in caps:
        cap = caps[stream]
        return SeriesVerdict(growth, "cap", growth.last <= cap, cap=cap, hours_to_cap=hours_to_cap(growth, cap))
    return SeriesVerdict(growth, "", True)


def verdict_failures(
    verdicts: Sequence[SeriesVerdict], steps_after_warmup: int, exited: Sequence[str], max_relative_per_hour: float
) -> list[str]:
    failures = list(exited)
    if steps_after_warmup < 1:
        failures.append("the learner took no step after the warm-up: a stalled run proves nothing")
    for v in verdicts:
        if v.ok:
            continue
        if v.judged_by == "slope":
            failures.append(
                f"{v.growth.series} grows {v.relative_per_hour:+.1%} of its level per hour "
                f"(limit {max_relative_per_hour:.0%})"
            )
        else:
            failures.append(f"{v.growth.series} holds {v.growth.last:.0f} bytes, over its cap of {v.cap}")
    return failures


# ---------------------------------------------------------------------------- options and result


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 60.0
    interval_s: float = 60.0
    # None: a quarter of the run, at most 10 minutes.
    warmup_minutes: float | None = None
    # Memory and descriptors may grow by at most this fraction of their level per hour.
    max_relative_growth_per_hour: float = 0.10
    # Longest wait for the learner's first step.
    start_timeout_s: float = 900.0
    work_dir: str = "runs/bench-soak"
    results_dir: str | None = None
    results_name: str = "soak"

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ValueError("--minutes must be > 0")
        if self.interval_s <= 0:
            raise ValueError("--interval-s must be > 0")
        if self.warmup_minutes is not None and not 0 <= self.warmup_minutes < self.minutes:
            raise ValueError("--warmup-minutes must be >= 0 and below --minutes")
        if self.max_relative_growth_per_hour <= 0:
            raise ValueError("--max-relative-growth-per-hour must be > 0")
        if self.start_timeout_s <= 0:
            raise ValueError("--start-timeout-s must be > 0")
        if (self.minutes * 60 - self.warmup_s) / self.interval_s < MIN_POINTS:
            raise ValueError(
                f"fewer than {MIN_POINTS} samples after the warm-up: shorten --interval-s or lengthen --minutes"
            )

    @property
    def warmup_s(self) -> float:
        minutes = min(10.0, self.minutes / 4) if self.warmup_minutes is None else self.warmup_minutes
        return minutes * 60


@dataclass
class SoakResult:
    options: SoakOptions
    run_dir: str
    wall_seconds: float
    samples: list[Sample]
    # When the learner's first step was seen, in the samples' seconds (None: never).
    first_step_s: float | None
    verdicts: list[SeriesVerdict]
    caps: dict[str, int]
    steps_after_warmup: int
    exited: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        return verdict_failures(
            self.verdicts, self.steps_after_warmup, self.exited, self.options.max_relative_growth_per_hour
        )

    @property
    def ok(self) -> bool:
        return not self.failures()


def summarise(
    options: SoakOptions,
    run_dir: str,
    wall_seconds: float,
    samples: list[Sample],
    first_step_s: float | None,
    caps: dict[str, int],
    exited: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> SoakResult:
    """Verdicts on the samples taken from ``options.warmup_s`` after the learner's first step."""
    verdicts = []
    steps: list[float] = []
    if first_step_s is not None:
        warmed_up = first_step_s + options.warmup_s
        for name in series_names(samples):
            growth = growth_after_warmup(name, series_points(samples, name), warmed_up)
            if growth is not None:
                verdicts.append(judge_series(growth, options.max_relative_growth_per_hour, caps))
        steps = [v for t, v in series_points(samples, STEPS) if t >= warmed_up]
    return SoakResult(
        options=options,
        run_dir=run_dir,
        wall_seconds=wall_seconds,
        samples=samples,
        first_step_s=first_step_s,
        verdicts=verdicts,
        caps=dict(caps),
        steps_after_warmup=int(steps[-1] - steps[0]) if steps else 0,
        exited=list(exited),
        notes=list(notes),
    )


def _quantity(kind: str, value: float) -> str:
    if kind in (MEMORY, STREAM, DISK):
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.1f}"


def _signed_quantity(kind: str, value: float) -> str:
    return f"{'+' if value >= 0 else '-'}{_quantity(kind, abs(value))}"


def soak_markdown(result: SoakResult) -> str:
    o = result.options
    lines = [
        "# Soak",
        "",
        (
            f"{o.minutes:g} minutes of the whole system (bus, learner, allocator, actors), sampled every "
            f"{o.interval_s:g} s; growth is the Theil-Sen slope (the median of pairwise slopes) of the samples after a "
            f"{o.warmup_s / 60:g}-minute warm-up, both counted from the learner's first step "
            f"({'never taken' if result.first_step_s is None else f'{result.first_step_s:.0f} s after start'}). "
            f"Run directory `{result.run_dir}`; "
            f"{result.steps_after_warmup} learner steps after the warm-up."
        ),
        "",
        (
            "Judged by lasting slope relative to level (the smaller of the slope over the whole window and over its "
            "later half, so that memory which settled inside the window is not read as growth): memory, descriptors "
            "and the stored bytes of the streams that only "
            f"retention bounds (work, weights, state) must grow by at most {o.max_relative_growth_per_hour:.0%} of "
            f"their level per hour (a stream's level counted as at least {STREAM_LEVEL_FLOOR / 2**20:.0f} MiB, one "
            "file-store block). Streams with a byte cap (nodes, trees, dead letters) must stay within it; the hours "
            "until the cap at the measured rate are listed. Bytes on disk (`disk_bytes`) also hold deleted messages "
            "until their block empties, and are reported only."
        ),
        "",
        "| series | level after warm-up | last | growth per hour | later half per hour | lasting, relative per hour "
        "| judged by | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in result.verdicts:
        g = v.growth
        kind = series_kind(g.series)
        judged = v.judged_by
        if v.judged_by == "cap" and v.cap is not None:
            until = "not growing" if v.hours_to_cap is None else f"{v.hours_to_cap:,.0f} h to cap"
            judged = f"cap {_quantity(kind, v.cap)} ({until})"
        relative = "" if v.relative_per_hour is None else f"{v.relative_per_hour:+.1%}"
        later = "" if g.later_half_per_hour is None else _signed_quantity(kind, g.later_half_per_hour)
        lines.append(
            f"| {g.series} | {_quantity(kind, g.level)} | {_quantity(kind, g.last)} | "
            f"{_signed_quantity(kind, g.per_hour)} | {later} | {relative} | "
            f"{judged or 'reported'} | {'' if not v.judged_by else ('yes' if v.ok else '**NO**')} |"
        )
    for note in result.notes:
        lines.append(f"\nNote: {note}")
    failures = result.failures()
    lines += ["", "No unbounded growth." if not failures else "FAILED: " + "; ".join(failures)]
    return "\n".join(lines) + "\n"


def write_soak_results(result: SoakResult) -> tuple[Path, Path]:
    from bench.runs import write_results

    payload = {
        "options": {**dataclasses.asdict(result.options), "warmup_s": result.options.warmup_s},
        "run_dir": result.run_dir,
        "wall_seconds": result.wall_seconds,
        "first_step_s": result.first_step_s,
        "steps_after_warmup": result.steps_after_warmup,
        "caps": result.caps,
        "series": [
            {
                **dataclasses.asdict(v.growth),
                "relative_per_hour": v.relative_per_hour,
                "judged_by": v.judged_by,
                "ok": v.ok,
                "cap": v.cap,
                "hours_to_cap": v.hours_to_cap,
            }
            for v in result.verdicts
        ],
        "samples": [dataclasses.asdict(s) for s in result.samples],
        "exited": result.exited,
        "notes": result.notes,
        "ok": result.ok,
        "failures": result.failures(),
    }
    results_dir = Path(result.options.results_dir) if result.options.results_dir else None
    return write_results(result.options.results_name, payload, soak_markdown(result), results_dir)


# ---------------------------------------------------------------------------- sampling (I/O)


def process_tree(pid: int) -> list[Any] | None:
    """``pid`` and its descendants as psutil processes; None if ``pid`` is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return None


def process_tree_usage(pid: int) -> tuple[float, float, float] | None:
    """Resident bytes, open descriptors and live processes of ``pid`` and its descendants."""
    import psutil

    tree = process_tree(pid)
    if tree is None:
        return None
    rss = fds = count = 0
    for proc in tree:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            rss += proc.memory_info().rss
            fds += proc.num_fds()
            count += 1
        except psutil.Error:  # ended while being read
            continue
    return float(rss), float(fds), float(count)


def directory_bytes(path: Path, exclude: Path | None = None) -> int:
    total = 0
    for folder, subfolders, files in os.walk(path):
        if exclude is not None:
            subfolders[:] = [d for d in subfolders if Path(folder, d).resolve() != exclude.resolve()]
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:  # removed while being walked
                continue
    return total


def stream_labels(subjects: Subjects) -> dict[str, str]:
    """Store directory names of a run's streams and buckets, by the short names the series use."""
    return {
        subjects.nodes_stream: "nodes",
        subjects.work_stream: "work",
        subjects.trees_stream: "trees",
        subjects.dead_letter_stream: "dead_letter",
        f"OBJ_{subjects.weights_bucket}": "weights",
        f"KV_{subjects.state_bucket}": "state",
    }


def disk_usage(store_dir: Path, labels: Mapping[str, str]) -> dict[str, float]:
    """Bytes on disk of every stream directory under a nats-server store, and of the whole store
    (the nodes of a local cluster keep their stores side by side: their copies are added up)."""
    usage: dict[str, float] = {}
    for directory in store_dir.glob("**/streams/*"):
        key = f"{DISK}.{labels.get(directory.name, directory.name)}"
        usage[key] = usage.get(key, 0.0) + directory_bytes(directory)
    usage[f"{DISK}.total"] = float(directory_bytes(store_dir))
    return usage


def stream_bytes(jsz: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, float]:
    """The stored message bytes of the labelled streams in a ``/jsz?streams=true`` answer."""
    usage: dict[str, float] = {}
    for account in jsz.get("account_details") or ():
        for stream in account.get("stream_detail") or ():
            label = labels.get(stream.get("name", ""))
            if label is not None:
                usage[f"{STREAM}.{label}"] = float((stream.get("state") or {}).get("bytes", 0))
    return usage


def read_jsz(monitor_port: int) -> dict[str, Any]:
    """The bus's JetStream report with per-stream detail; empty if the bus does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/jsz?streams=true", timeout=5.0) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as err:
        log.warning("soak_jsz_unreadable", error=repr(err))
        return {}


def take_sample(run: BenchRun, started: float, labels: Mapping[str, str]) -> Sample:
    values: dict[str, float] = {}
    for name, proc in sorted(run.supervisor.processes.items()):
        usage = process_tree_usage(proc.popen.pid) if proc.alive else None
        if usage is not None:
            values[f"{MEMORY}.{name}"], values[f"{DESCRIPTORS}.{name}"], values[f"{PROCESSES}.{name}"] = usage
    bus = run.configs["bus"]
    values.update(stream_bytes(read_jsz(bus.monitor_port), labels))
    values.update(disk_usage(bus.store_path, labels))
    # Logs, metrics, checkpoints and the actors' weights: the run's files beside the store.
    values[f"{DISK}.run_files"] = float(directory_bytes(run.run_dir, exclude=bus.store_path))
    values[STEPS] = float(run.step())
    # How busy the machine was: on shared cores, memory settles later under load.
    values["load_1min"] = os.getloadavg()[0]
    return Sample(at_s=round(time.time() - started, 2), values=values)


def run_soak(options: SoakOptions, overrides: Sequence[str]) -> SoakResult:
    run_dir = Path(options.work_dir) / "soak"
    fresh_run_dir(run_dir, MARKER, "soak")
    up = bench_up_config(SOAK_RUN, [f"run.run_dir={run_dir}", *overrides], FORCED)
    limits = up.bus.streams
    caps = {label: getattr(limits, attr) for label, attr in CAPPED.items() if getattr(limits, attr)}
    labels = stream_labels(Subjects(up.run.run_id))
    samples: list[Sample] = []
    exited: list[str] = []
    notes: list[str] = []
    first_step_s: float | None = None
    with BenchRun(up, "soak") as run:
        run.start()
        started = run.started
        deadline = started + options.start_timeout_s
        next_sample = started
        while time.time() < deadline:
            failure = run.failure()
            if failure:
                exited.append(f"during the soak: {failure.splitlines()[0]}")
                break
            if first_step_s is None and run.step() >= 1:
                first_step_s = round(time.time() - started, 2)
                deadline = time.time() + options.minutes * 60
            if time.time() >= next_sample:
                samples.append(take_sample(run, started, labels))
                log.info("soak_sample", at_s=samples[-1].at_s, learner_step=samples[-1].values.get(STEPS))
                next_sample += options.interval_s
            run.tick()
            time.sleep(0.25)
        if not exited:
            samples.append(take_sample(run, started, labels))
        wall = time.time() - started
        # In `tracerl up`'s order; a role that does not stop cleanly is a failure too.
        for name, code in run.stop_each(["learner", "allocator", *run.actor_names, "bus"], timeout_s=120.0).items():
            if code not in (0, None):
                exited.append(f"{name} exited with code {code} on its stop")
    if first_step_s is None and not exited:
        notes.append(f"the learner took no step within {options.start_timeout_s:.0f} s")
    result = summarise(options, str(run_dir), round(wall, 1), samples, first_step_s, caps, exited, notes)
    write_soak_results(result)
    return result


def rejudged(payload: Mapping[str, Any], results_path: Path) -> SoakResult:
    """A recorded soak judged again from its samples by this version's rules, to be written back
    where it was read from (the samples, not the verdicts, are the record)."""
    recorded = payload["options"]
    stored = {f.name: recorded[f.name] for f in dataclasses.fields(SoakOptions) if f.name in recorded}
    options = SoakOptions(**{**stored, "results_dir": str(results_path.parent), "results_name": results_path.stem})
    return summarise(
        options,
        payload["run_dir"],
        payload["wall_seconds"],
        [Sample(at_s=s["at_s"], values=dict(s["values"])) for s in payload["samples"]],
        payload["first_step_s"],
        {name: int(cap) for name, cap in payload["caps"].items()},
        payload.get("exited", ()),
        payload.get("notes", ()),
    )


def rejudge_command(results_path: Path) -> int:
    """`tracerl bench soak --rejudge FILE`: judge a recorded soak again, rewrite its json and markdown."""
    result = rejudged(json.loads(results_path.read_text()), results_path)
    write_soak_results(result)
    print(soak_markdown(result), flush=True)
    return 0 if result.ok else 1


def soak_command(options: SoakOptions, overrides: Sequence[str]) -> int:
    """`tracerl bench soak`: run, print the table, exit 1 on growth without bound."""
    result = run_soak(options, overrides)
    print(soak_markdown(result), flush=True)
    return 0 if result.ok else 1
