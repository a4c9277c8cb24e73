"""`tracerl bench chaos`: a real run (bus, allocator, actors, learner) under a seeded fault
schedule, then a node-by-node reconciliation of what the run produced.

Faults, each at a learner step drawn from the seed plus a short random delay, so they land
mid-step rather than on step boundaries:

- ``kill_actor``: SIGKILL one actor (with its engine) and start a new one under a new id;
  its unacked work is redelivered to the others after the stream's ``ack_wait``;
- ``kill_learner``: SIGKILL and restart; it resumes from its rolling checkpoint;
- ``kill_allocator``: SIGKILL and restart; it rebuilds its core from the streams;
- ``restart_bus``: SIGKILL nats-server and start it again on the same port and store.

At the end the actors stop, the allocator drains its consumer and stops cleanly (recording
what its open trees hold), and the harness reads the run's streams. Every accepted
TurnNode id on the nodes stream must be in a CompletedTree on the trees stream, or in the
allocator's record of deliberate drops, or held in an open tree at the clean stop; and no
node may appear in two trees. The learner's records must show no token trained past its
staleness bound and policy versions that go strictly up. ``reconcile`` is the pure check;
the rest of this module starts, breaks and reads the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.harness import SMALL_RUN, BenchRun, bench_up_config, count_log_events, fresh_run_dir, learner_steps
from learner.versions import Publication, read_publications
from tracerl.logs import get_logger
from tracerl.metrics import metrics_path, read_metrics

log = get_logger(__name__)

ACTIONS = ("kill_actor", "kill_learner", "kill_allocator", "restart_bus")

CHAOS_RUN: dict[str, Any] = {**SMALL_RUN, "run.run_id": "chaos", "run.run_dir": "runs/bench-chaos/chaos"}


# ---------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ChaosEvent:
    action: str
    # Fires once the learner has taken this many steps, plus ``delay_s``.
    after_step: int
    delay_s: float


def chaos_schedule(
    seed: int, actions: Sequence[str], first_step: int, steps_between: int, max_delay_s: float
) -> list[ChaosEvent]:
    """The actions in a seeded order, one every ``steps_between`` learner steps."""
    unknown = sorted(set(actions) - set(ACTIONS))
    if unknown:
        raise ValueError(f"unknown chaos actions {unknown}; expected some of {list(ACTIONS)}")
    rng = random.Random(seed)
    order = list(actions)
    rng.shuffle(order)
    return [
        ChaosEvent(action, first_step + i * steps_between, round(rng.uniform(0.0, max_delay_s), 2))
        for i, action in enumerate(order)
    ]


# ---------------------------------------------------------------------------- reconciliation


@dataclass(frozen=True)
class DropRecord:
    """One line of the allocator's ``metrics/allocator_drops.jsonl``."""

    reason: str
    tree_id: str
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class Reconciliation:
    accepted_nodes: int  # distinct training TurnNode ids on the nodes stream
    node_messages: int
    tree_messages: int
    distinct_trees: int
    nodes_in_trees: int
    # Accepted nodes outside every tree, by the reason the allocator recorded.
    dropped: dict[str, int]
    held_at_stop: int
    lost: list[str]
    duplicated_in_trees: list[str]
    # Node ids in a tree that no actor ever published: the tree was not built from the stream.
    phantom_in_trees: list[str]
    trees_emitted_twice: list[str]
    trained_tokens_past_bound: float
    versions: list[int]
    version_violations: list[tuple[int, int]]

    @property
    def versions_strictly_increasing(self) -> bool:
        return not self.version_violations

    def failures(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} accepted node(s) lost")
        if self.duplicated_in_trees:
            out.append(f"{len(self.duplicated_in_trees)} node(s) in more than one tree")
        if self.phantom_in_trees:
            out.append(f"{len(self.phantom_in_trees)} node(s) in trees but never on the nodes stream")
        if self.trained_tokens_past_bound > 0:
            out.append(f"{self.trained_tokens_past_bound:g} token(s) trained past the staleness bound")
        if self.version_violations:
            out.append(f"policy versions went {self.version_violations} (must go strictly up)")
        return out


def version_violations(publications: Sequence[Publication]) -> list[tuple[int, int]]:
    """Consecutive announcements that do not go strictly up.

    A restarted learner does not announce again the version the run already has, so even
    a repeat with the same weights is a violation: it means a restart was not recognised.
    """
    return [
        (prev.policy_version, cur.policy_version)
        for prev, cur in pairwise(publications)
        if cur.policy_version <= prev.policy_version
    ]


def reconcile(
    node_ids: Iterable[str],
    trees: Iterable[tuple[str, Sequence[str]]],
    drops: Iterable[DropRecord],
    held: Iterable[str],
    publications: Sequence[Publication],
    trained_tokens_past_bound: float,
) -> Reconciliation:
    """Account for every accepted node; pure, so it is tested on hand-made inputs.

    ``node_ids`` are the training nodes on the nodes stream (repeats allowed: a node
    regenerated after its duplicate window is stored twice under one id), ``trees`` the
    (tree id, node ids) of every CompletedTree message, ``drops`` the allocator's records,
    ``held`` the node ids in open trees at the last clean stop of the allocator.
    A node both in a tree and in a drop record (a step closed again after a crash, or a
    redelivered copy that arrived late) counts as in the tree.
    """
    messages = 0
    accepted: set[str] = set()
    for node_id in node_ids:
        messages += 1
        accepted.add(node_id)
    occurrences: Counter[str] = Counter()
    tree_counts: Counter[str] = Counter()
    for tree_id, ids in trees:
        tree_counts[tree_id] += 1
        occurrences.update(ids)
    reasons: dict[str, str] = {}
    for record in drops:
        for node_id in record.node_ids:
            reasons.setdefault(node_id, record.reason)
    held_ids = set(held)
    outside = accepted - occurrences.keys()
    dropped = Counter(reasons[i] for i in outside if i in reasons)
    held_at_stop = sum(1 for i in outside if i not in reasons and i in held_ids)
    lost = sorted(i for i in outside if i not in reasons and i not in held_ids)
    return Reconciliation(
        accepted_nodes=len(accepted),
        node_messages=messages,
        tree_messages=sum(tree_counts.values()),
        distinct_trees=len(tree_counts),
        nodes_in_trees=len(accepted & occurrences.keys()),
        dropped=dict(sorted(dropped.items())),
        held_at_stop=held_at_stop,
        lost=lost,
        duplicated_in_trees=sorted(i for i, n in occurrences.items() if n > 1),
        phantom_in_trees=sorted(occurrences.keys() - accepted),
        trees_emitted_twice=sorted(t for t, n in tree_counts.items() if n > 1),
        trained_tokens_past_bound=trained_tokens_past_bound,
        versions=[p.policy_version for p in publications],
        version_violations=version_violations(publications),
    )


# ---------------------------------------------------------------------------- run records


def read_drop_records(run_dir: Path) -> list[DropRecord]:
    from allocator.service import DROPS_METRICS

    return [
        DropRecord(r["reason"], r["tree_id"], tuple(r["node_ids"]))
        for r in read_metrics(metrics_path(run_dir, DROPS_METRICS))
        if "node_ids" in r
    ]


def read_held(run_dir: Path) -> tuple[list[str], bool]:
    """Node ids the allocator's last incarnation held at its clean stop, and whether it recorded one."""
    from allocator.service import HELD_METRICS

    records = list(read_metrics(metrics_path(run_dir, HELD_METRICS)))
    stops = [r["incarnation"] for r in records if r.get("stopped")]
    if not stops:
        return [], False
    last = max(stops)
    return [i for r in records if r.get("incarnation") == last and "node_ids" in r for i in r["node_ids"]], True


def trained_tokens_past_bound(run_dir: Path) -> float:
    return float(sum(r.get("train.trained_tokens_past_bound") or 0.0 for r in learner_steps(run_dir)))


async def read_stream_ids(
    run_dir: Path, run_id: str, servers: list[str]
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Training node ids on the nodes stream and (tree id, node ids) on the trees stream, as admin."""
    from allocator.heldout import is_probe_tree
    from bus.client import BusClient
    from bus.streams import read_stream
    from protocol import CompletedTree, ProtocolError, TurnNode
    from tracerl.config import BusConfig, RunConfig

    admin = await BusClient.connect("admin", BusConfig(servers=servers), RunConfig(run_id=run_id, run_dir=str(run_dir)))
    try:
        s = admin.subjects
        nodes = [
            n.node_id
            async for _, _, n in read_stream(admin.js, s.nodes_stream, s.nodes, TurnNode)
            if not isinstance(n, ProtocolError) and not is_probe_tree(n.tree_id)
        ]
        trees = [
            (t.tree_id, [n.node_id for n in t.nodes])
            async for _, _, t in read_stream(admin.js, s.trees_stream, s.trees, CompletedTree)
            if not isinstance(t, ProtocolError)
        ]
    finally:
        await admin.close()
    return nodes, trees


async def wait_consumer_drained(
    run_dir: Path, run_id: str, servers: list[str], consumer: str, timeout_s: float, stream: str | None = None
) -> bool:
    """Until a durable (by default on the nodes stream: the allocator's) has nothing pending or
    unacked: every stored message handled."""
    from bus.client import BusClient
    from tracerl.config import BusConfig, RunConfig

    admin = await BusClient.connect("admin", BusConfig(servers=servers), RunConfig(run_id=run_id, run_dir=str(run_dir)))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            info = await admin.js.consumer_info(stream or admin.subjects.nodes_stream, consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await admin.close()


# ---------------------------------------------------------------------------- the run

# Marks a run directory as this bench's own, so a rerun may delete it (and nothing else).
RUN_MARKER = ".chaos-run"


@dataclass(frozen=True)
class ChaosOptions:
    seed: int = 0
    actions: tuple[str, ...] = ACTIONS
    # The first fault after this many learner steps, then one every steps_between steps.
    first_step: int = 2
    steps_between: int = 2
    max_delay_s: float = 4.0
    # The run ends (the learner is stopped cleanly) this many learner steps after the last
    # fault: recovery is shown by training going on.
    steps_after: int = 2
    timeout_s: float = 1800.0
    drain_timeout_s: float = 60.0
    bus_restart_timeout_s: float = 30.0
    # Where chaos.json / chaos.md go; None means bench/results.
    results_dir: str | None = None

    def __post_init__(self) -> None:
        if self.first_step < 1 or self.steps_between < 1 or self.steps_after < 1:
            raise ValueError("first_step, steps_between and steps_after must be >= 1")
        chaos_schedule(0, self.actions, 1, 1, 0.0)  # validates the action names


@dataclass
class EventRecord:
    action: str
    target: str
    learner_step: int
    at_s: float
    replacement: str = ""
    # Seconds from the fault to the learner's next step.
    recovery_s: float | None = None


@dataclass
class ChaosResult:
    seed: int
    run_dir: str
    wall_seconds: float
    learner_steps: int
    finished: bool
    events: list[EventRecord]
    crashed_roles: list[str]
    reconciliation: Reconciliation | None
    held_recorded: bool
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out = []
        if not self.finished:
            out.append("the learner did not reach its last step")
        if self.crashed_roles:
            out.append(f"roles exited on their own: {self.crashed_roles}")
        if not self.held_recorded:
            out.append("the allocator recorded no clean stop")
        if self.reconciliation is None:
            out.append("no reconciliation")
        else:
            out += self.reconciliation.failures()
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()


# The log event that says a restarted role serves again; the next fault waits for it, so
# each fault meets a system that had recovered from the one before. A replacement actor is
# not waited for (its engine takes a minute to start; the other actor carries on).
READY_EVENTS = {"kill_learner": ("learner", "learner_started"), "kill_allocator": ("allocator", "allocator_started")}


def _bus_healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_chaos(options: ChaosOptions, up_overrides: list[str]) -> ChaosResult:
    """One chaos sample: the run, the faults, the reconciliation, and the result files."""
    from tracerl.supervisor import wait_for

    # The harness ends the run, after the last fault: a learner that stopped at a fixed step
    # could finish before the faults have all fired.
    up = bench_up_config(CHAOS_RUN, up_overrides, ["learner.training.max_steps=0"])
    run_dir = Path(up.run.run_dir)
    fresh_run_dir(run_dir, RUN_MARKER, "chaos")
    run = BenchRun(up, "chaos")
    supervisor = run.supervisor
    servers = run.servers
    monitor_port = run.configs["bus"].monitor_port
    schedule = chaos_schedule(
        options.seed, options.actions, options.first_step, options.steps_between, options.max_delay_s
    )
    rng = random.Random(options.seed + 1)  # which actor dies
    log.info("chaos_started", run_dir=str(run_dir), seed=options.seed, schedule=[e.__dict__ for e in schedule])
    print(
        f"[chaos] run {up.run.run_id} in {run_dir}; schedule: "
        + ", ".join(f"{e.action}@step{e.after_step}+{e.delay_s}s" for e in schedule),
        flush=True,
    )

    events: list[EventRecord] = []
    crashed: list[str] = []
    notes: list[str] = []
    finished = False
    next_actor = up.num_actors
    started = time.time()

    step_now = run.step

    def fire(event: ChaosEvent) -> EventRecord:
        nonlocal next_actor
        record = EventRecord(event.action, "", step_now(), round(time.time() - started, 1))
        if event.action == "kill_actor":
            alive = sorted(n for n, p in supervisor.processes.items() if n.startswith("actor-") and p.alive)
            victim = rng.choice(alive)
            new = f"actor-{next_actor}"
            next_actor += 1
            supervisor.kill(victim)
            run.start_actor(new, like=victim)
            record.target, record.replacement = victim, new
        elif event.action == "kill_learner":
            supervisor.restart("learner")
            record.target = "learner"
        elif event.action == "kill_allocator":
            supervisor.restart("allocator")
            record.target = "allocator"
        elif event.action == "restart_bus":
            supervisor.restart("bus")
            record.target = "bus"
            wait_for(lambda: _bus_healthy(monitor_port), options.bus_restart_timeout_s, what="the restarted bus")
        log.info("chaos_event", **record.__dict__)
        print(
            f"[chaos] {record.at_s:6.1f}s step {record.learner_step}: {event.action} {record.target} "
            f"{('-> ' + record.replacement) if record.replacement else ''}",
            flush=True,
        )
        return record

    try:
        run.start()
        pending = list(schedule)
        due_at: float | None = None
        ready: tuple[str, str, int] | None = None  # (log, event, count) the last fault waits for
        last_step: int | None = None  # the run ends once the learner reaches it
        while True:
            learner = supervisor.processes["learner"]
            if not learner.alive:
                crashed.append(f"learner (exit {learner.popen.returncode})")
                break
            if last_step is not None and step_now() >= last_step:
                code = supervisor.stop("learner", timeout_s=120.0)
                finished = code == 0
                if not finished:
                    crashed.append(f"learner (exit {code} on its clean stop)")
                break
            failure = run.failure()
            if failure:
                crashed.append(failure.splitlines()[0])
                break
            if time.time() - started > options.timeout_s:
                notes.append(f"timed out after {options.timeout_s:.0f} s")
                break
            if ready is not None and count_log_events(run_dir, ready[0], ready[1]) >= ready[2]:
                ready = None
            if pending and due_at is None and ready is None and step_now() >= pending[0].after_step:
                due_at = time.time() + pending[0].delay_s
            if pending and due_at is not None and time.time() >= due_at:
                try:
                    action = pending[0].action
                    if action in READY_EVENTS:
                        name, event = READY_EVENTS[action]
                        ready = (name, event, count_log_events(run_dir, name, event) + 1)
                    events.append(fire(pending.pop(0)))
                except TimeoutError as err:
                    crashed.append(str(err))
                    break
                due_at = None
                if not pending:
                    last_step = events[-1].learner_step + options.steps_after
            run.tick()
            time.sleep(0.25)
        if pending:
            notes.append(f"{len(pending)} fault(s) never fired: {[e.action for e in pending]}")

        # Quiesce: no new nodes, every stored node handled, then a clean allocator stop.
        for name in [n for n in supervisor.processes if n.startswith("actor-")]:
            supervisor.stop(name, timeout_s=60.0)
        drained = False
        if supervisor.processes["bus"].alive and supervisor.processes["allocator"].alive:
            drained = asyncio.run(
                wait_consumer_drained(run_dir, up.run.run_id, servers, "allocator", options.drain_timeout_s)
            )
        if not drained:
            notes.append("the allocator's consumer did not drain before its stop")
        supervisor.stop("allocator", timeout_s=60.0)
        reconciliation = None
        if supervisor.processes["bus"].alive:
            nodes, trees = asyncio.run(read_stream_ids(run_dir, up.run.run_id, servers))
            held, _ = read_held(run_dir)
            reconciliation = reconcile(
                nodes,
                trees,
                read_drop_records(run_dir),
                held,
                read_publications(run_dir),
                trained_tokens_past_bound(run_dir),
            )
    finally:
        run.stop()
    _, held_recorded = read_held(run_dir)
    steps_log = learner_steps(run_dir)
    for fired in events:
        after = [r["time"] for r in steps_log if r["time"] > started + fired.at_s]
        fired.recovery_s = round(min(after) - started - fired.at_s, 1) if after else None
    result = ChaosResult(
        seed=options.seed,
        run_dir=str(run_dir),
        wall_seconds=round(time.time() - started, 1),
        learner_steps=step_now(),
        finished=finished,
        events=events,
        crashed_roles=crashed,
        reconciliation=reconciliation,
        held_recorded=held_recorded,
        notes=notes,
    )
    write_chaos_results(result, Path(options.results_dir) if options.results_dir else None)
    return result


# ---------------------------------------------------------------------------- results


def chaos_markdown(result: ChaosResult) -> str:
    r = result.reconciliation
    lines = [
        "# Chaos run",
        "",
        f"Seed {result.seed}; {result.learner_steps} learner steps in {result.wall_seconds:.0f} s; "
        f"run directory `{result.run_dir}`.",
        "",
        "| # | fault | target | at learner step | at s | next learner step after (s) |",
        "|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(result.events, 1):
        target = f"{e.target} -> {e.replacement}" if e.replacement else e.target
        recovery = "n/a" if e.recovery_s is None else f"{e.recovery_s:.1f}"
        lines.append(f"| {i} | {e.action} | {target} | {e.learner_step} | {e.at_s:.1f} | {recovery} |")
    lines += ["", "| check | value | ok |", "|---|---|---|"]

    def row(name: str, value: Any, ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "**NO**")
        lines.append(f"| {name} | {value} | {mark} |")

    if r is not None:
        row("accepted TurnNodes (distinct ids; messages)", f"{r.accepted_nodes} ({r.node_messages})")
        row("CompletedTrees (distinct; messages)", f"{r.distinct_trees} ({r.tree_messages})")
        row("accepted nodes in a tree", r.nodes_in_trees)
        row("dropped on purpose, by reason", ", ".join(f"{k} {v}" for k, v in r.dropped.items()) or "0")
        row("held in open trees at the allocator's clean stop", r.held_at_stop)
        row("lost", len(r.lost), not r.lost)
        row("duplicated in trees", len(r.duplicated_in_trees), not r.duplicated_in_trees)
        row("in trees but never on the nodes stream", len(r.phantom_in_trees), not r.phantom_in_trees)
        past = r.trained_tokens_past_bound
        row("tokens trained past the staleness bound", f"{past:g}", past == 0)
        versions = " ".join(map(str, r.versions))
        row("policy versions announced", versions, r.versions_strictly_increasing)
    row("roles that exited on their own", ", ".join(result.crashed_roles) or "none", not result.crashed_roles)
    row("run finished", result.finished, result.finished)
    for note in result.notes:
        lines.append(f"\nNote: {note}")
    lines += ["", "All invariants hold." if result.ok else "FAILED: " + "; ".join(result.failures())]
    return "\n".join(lines) + "\n"


def write_chaos_results(result: ChaosResult, results_dir: Path | None = None) -> tuple[Path, Path]:
    from bench.runs import write_results

    payload = {**dataclasses.asdict(result), "ok": result.ok, "failures": result.failures()}
    return write_results("chaos", payload, chaos_markdown(result), results_dir)
