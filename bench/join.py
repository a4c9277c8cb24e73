"""`tracerl bench join`: how long a new actor takes to join a running run and publish its
first TurnNode, against one nats-server and against a three-node cluster.

Each sample is a real run (bus, learner, allocator, one actor; bench.harness) that has
already taken a learner step, so a policy version beyond the initial one is announced and
work is flowing. Then a new `tracerl actor` process starts, exactly as a user would start
one on another host, and its own log gives the phases up to its first node:

- start: fork/exec to its first log line (interpreter, imports, config);
- engine: importing vLLM and starting its engine (model load, KV-cache allocation, warm-up);
- bus: connecting to the bus with its credentials;
- weights: fetching, verifying and loading the announced weights (absent if the announced
  version is the one it started with);
- registered: heartbeat in the registry and its work consumers bound (``actor_serving``);
- first node: from serving to its first TurnNode stored on the nodes stream (pulling an
  item, waiting for the version it asks for, generating the turn, the stream's ack).

``join_breakdown`` is the pure part: log events in, phases out.

On one machine the new actor shares the cores with the run it joins (the learner, the
allocator and the first actor keep training), so its engine start is slower than on a host
of its own; the first actor's engine start, timed before training loaded the machine, is
recorded next to it for comparison.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import SMALL_RUN, BenchRun, bench_up_config, count_log_events, fresh_run_dir, read_log_events
from bench.runs import write_results

RUN_MARKER = ".join-run"
BUSES = ("single", "cluster")
# The cluster sample: three local nodes, every stream and bucket with three replicas.
CLUSTER_OVERRIDES = ["bus.cluster.name=join", "bus.cluster.local_nodes=3"]
JOIN_RUN: dict[str, Any] = {**SMALL_RUN, "num_actors": 1}

# (phase, the log event that ends it), in the order an actor logs them.
PHASES: tuple[tuple[str, str], ...] = (
    ("start", "actor_starting"),
    ("engine", "engine_started"),
    ("bus", "bus_connected"),
    ("weights", "weights_reloaded"),
    ("registered", "actor_serving"),
    ("first node", "first_node_published"),
)


def event_time(event: dict[str, Any]) -> float:
    """Epoch seconds of a structlog record (ISO timestamps, UTC)."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class JoinBreakdown:
    total_s: float
    # (phase, seconds) in order; a phase whose event is absent (no weights to load) is left out.
    phases: tuple[tuple[str, float], ...]
    policy_version: int | None


def join_breakdown(started_at: float, events: Sequence[dict[str, Any]]) -> JoinBreakdown | None:
    """The phases from ``started_at`` (the process start) to the first node, from the actor's log.

    Only the first occurrence of each event counts, and only those before the first node
    (a weights reload after it is the run moving on, not the join). None if the actor never
    published a node.
    """
    first: dict[str, dict[str, Any]] = {}
    for event in events:
        first.setdefault(event.get("event", ""), event)
    end = first.get("first_node_published")
    if end is None:
        return None
    end_at = event_time(end)
    phases = []
    before = started_at
    for phase, name in PHASES:
        reached = first.get(name)
        if reached is None or event_time(reached) > end_at:
            continue
        at = event_time(reached)
        phases.append((phase, round(at - before, 3)))
        before = at
    return JoinBreakdown(round(end_at - started_at, 3), tuple(phases), end.get("policy_version"))


@dataclass
class JoinSample:
    bus: str
    actor: str
    run_dir: str
    learner_step_at_start: int
    server: str
    breakdown: JoinBreakdown | None
    load_average: tuple[float, float, float]
    # The run's first actor's engine start (its own timer, imports excluded), before training began.
    first_actor_engine_s: float | None = None
    failure: str | None = None


@dataclass
class JoinResult:
    samples: list[JoinSample]
    cpus: int
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.samples) and all(s.breakdown is not None and s.failure is None for s in self.samples)


def _first_event(run_dir: Path, actor: str, event: str) -> dict[str, Any]:
    return next((e for e in read_log_events(run_dir, f"actor-{actor}") if e.get("event") == event), {})


def run_join_sample(
    bus: str, joins: int, work_dir: Path, overrides: Sequence[str], timeout_s: float
) -> list[JoinSample]:
    name = f"join-{bus}"
    run_dir = work_dir / name
    extra = CLUSTER_OVERRIDES if bus == "cluster" else []
    up = bench_up_config(
        JOIN_RUN, [f"run.run_id={name}", f"run.run_dir={run_dir}", *extra, *overrides], ["learner.training.max_steps=0"]
    )
    fresh_run_dir(run_dir, RUN_MARKER, "join")
    samples: list[JoinSample] = []
    run = BenchRun(up, "join")
    print(f"[join] {bus} bus: run {name} in {run_dir}", flush=True)
    with run:
        run.start()
        failure = run.wait_until(
            lambda: run.step() >= 1 and count_log_events(run.run_dir, "actor-actor-0", "first_node_published") > 0,
            timeout_s,
            "the run's first learner step",
        )
        for index in range(joins):
            if failure:
                break
            actor = f"actor-join{index}"
            step = run.step()
            started_at = time.time()
            run.start_actor(actor, like="actor-0")
            failure = run.wait_until(
                lambda a=actor: count_log_events(run.run_dir, f"actor-{a}", "first_node_published") > 0,
                timeout_s,
                f"{actor}'s first node",
            )
            breakdown = join_breakdown(started_at, read_log_events(run.run_dir, f"actor-{actor}"))
            server = str(_first_event(run.run_dir, actor, "bus_connected").get("server", ""))
            reference = _first_event(run.run_dir, "actor-0", "engine_started").get("seconds")
            sample = JoinSample(
                bus,
                actor,
                str(run_dir),
                step,
                server,
                breakdown,
                os.getloadavg(),
                reference,
                failure.splitlines()[0] if failure else None,
            )
            samples.append(sample)
            print("[join] " + sample_line(sample), flush=True)
        if failure and not samples:
            samples.append(
                JoinSample(
                    bus, "", str(run_dir), run.step(), "", None, os.getloadavg(), failure=failure.splitlines()[0]
                )
            )
    return samples


def sample_line(sample: JoinSample) -> str:
    b = sample.breakdown
    if b is None:
        return f"{sample.bus}: {sample.actor or 'no actor'} did not join ({sample.failure})"
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in b.phases)
    return f"{sample.bus}: {sample.actor} published its first node {b.total_s:.1f} s after its start ({phases})"


def check_join_args(buses: Sequence[str], joins: int) -> None:
    if not buses or set(buses) - set(BUSES):
        raise ValueError(f"buses must be some of {list(BUSES)}, got {list(buses)}")
    if joins < 1:
        raise ValueError("joins must be >= 1")


def run_join(
    buses: Sequence[str],
    joins: int,
    work_dir: Path,
    overrides: Sequence[str],
    timeout_s: float,
    results_dir: Path | None = None,
) -> JoinResult:
    check_join_args(buses, joins)
    samples = [s for bus in buses for s in run_join_sample(bus, joins, work_dir, overrides, timeout_s)]
    result = JoinResult(samples, os.cpu_count() or 0)
    if any(s.load_average[0] > result.cpus for s in samples):
        result.notes.append(
            f"the machine was oversubscribed during the joins (1-minute load above its {result.cpus} cores): "
            "every phase that computes (engine start above all) is slower than on an idle machine"
        )
    write_join_results(result, results_dir)
    return result


def join_markdown(result: JoinResult) -> str:
    phases = [p for p, _ in PHASES]
    lines = [
        "# Actor join",
        "",
        "A new `tracerl actor` process started against a running run (one learner step taken, one actor "
        "serving); seconds from its process start to its first TurnNode, by phase (from its own log).",
        "",
        "| bus | actor | connected to | " + " | ".join(phases) + " | total | 1-min load | first actor's engine |",
        "|---" * (len(phases) + 6) + "|",
    ]
    for s in result.samples:
        if s.breakdown is None:
            lines.append(
                f"| {s.bus} | {s.actor or '-'} | {s.server or '-'} | "
                + " | ".join("-" for _ in phases)
                + f" | failed: {s.failure} | {s.load_average[0]:.1f} | - |"
            )
            continue
        got = dict(s.breakdown.phases)
        cells = [f"{got[p]:.2f}" if p in got else "-" for p in phases]
        reference = "-" if s.first_actor_engine_s is None else f"{s.first_actor_engine_s:.1f}"
        lines.append(
            f"| {s.bus} | {s.actor} | {s.server} | "
            + " | ".join(cells)
            + f" | **{s.breakdown.total_s:.1f}** | {s.load_average[0]:.1f} | {reference} |"
        )
    lines += [
        "",
        f"Machine: {result.cpus} cores. The new actor shares them with the run it joins (learner, allocator and "
        "the first actor keep training), so the engine phase is slower than on a host of its own; the last column "
        "is the first actor's engine start by the engine's own timer (imports excluded), at the start of the run "
        "before training loaded the machine.",
    ]
    for note in result.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def write_join_results(result: JoinResult, results_dir: Path | None = None) -> tuple[Path, Path]:
    return write_results("join", {**dataclasses.asdict(result), "ok": result.ok}, join_markdown(result), results_dir)
