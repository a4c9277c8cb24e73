"""`tracerl bench chaos`: a real run (bus, allocator, actors, learner) under a seeded fault
schedule, then a node-by-node and tree-by-tree reconciliation of what the run produced.

Two schedules. ``fixed`` fires each of ``ACTIONS`` once, one at a time; ``random`` draws
``--faults`` faults from ``RANDOM_ACTIONS`` in waves of one or two fired at once, so faults
overlap. Each wave fires at a learner step plus a short random delay, so faults land
mid-step rather than on step boundaries:

- ``kill_actor``: SIGKILL one actor (with its engine) and start a new one under a new id;
  its unacked work is redelivered to the others after the stream's ``ack_wait``;
- ``kill_learner``: SIGKILL and restart; it resumes from its rolling checkpoint;
- ``kill_allocator``: SIGKILL and restart; it rebuilds its core from the streams;
- ``restart_bus``: SIGKILL nats-server (every node of a cluster) and start it again on the
  same ports and store;
- ``kill_cluster_node``: SIGKILL one node of a clustered bus, started again on its own
  config after ``ack_wait`` (only on a clustered bus);
- ``stall_actor``: SIGSTOP one actor with its engine for longer than ``ack_wait``, then
  SIGCONT: its work goes to another actor meanwhile, and it wakes up holding stale work;
- ``fill_store``: publish filler into a stream of its own until the JetStream store is near
  ``bus.max_store_mib``, hold it there, then delete it (only with a store limit).

At the end the actors stop, the allocator drains its consumer and stops cleanly (recording
what its open trees hold), and the harness reads the run's streams. Every accepted
TurnNode id on the nodes stream must be in a CompletedTree on the trees stream, or in the
allocator's record of deliberate drops, or held in an open tree at the clean stop; and no
node may appear in two trees. Every CompletedTree must be in the learner's record of what
its checkpoints trained (``metrics/learner_trees.jsonl``) or still wait, unacked, on the
learner's durable; none may be trained twice. The learner's records must show no token
trained past its staleness bound and policy versions that go strictly up. ``reconcile``
and ``reconcile_training`` are the pure checks; the rest of this module starts, breaks and
reads the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from allocator.shard import ShardConfig
from bench.harness import SMALL_RUN, BenchRun, bench_up_config, count_log_events, fresh_run_dir, learner_steps
from learner.versions import Publication, read_publications
from tracerl.logs import get_logger
from tracerl.metrics import metrics_path, read_metrics

log = get_logger(__name__)

ACTIONS = ("kill_actor", "kill_learner", "kill_allocator", "restart_bus")
#: What a random schedule draws from.
RANDOM_ACTIONS = (*ACTIONS, "kill_cluster_node", "stall_actor", "fill_store")
SCHEDULES = ("fixed", "random")

CHAOS_RUN: dict[str, Any] = {**SMALL_RUN, "run.run_id": "chaos", "run.run_dir": "runs/bench-chaos/chaos"}
# A random schedule fills the store toward its limit, so the run has one: room for the few
# MiB a short run stores (a few weight versions of the 4 MiB model, the nodes and trees) and
# the filler. The streams' byte caps are reserved from that limit when they are created, so
# they are sized to leave the filler most of it.
RANDOM_RUN: dict[str, Any] = {
    **CHAOS_RUN,
    "bus.max_store_mib": 64,
    "bus.streams.nodes_max_bytes": 4 * 1024 * 1024,
    "bus.streams.trees_max_bytes": 8 * 1024 * 1024,
    "bus.streams.dead_letter_max_bytes": 1024 * 1024,
}


# ---------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ChaosEvent:
    action: str
    # Fires once the learner has taken this many steps, plus ``delay_s``.
    after_step: int
    delay_s: float


@dataclass(frozen=True)
class ChaosWave:
    """Faults fired at once (one, or two that overlap) once the learner has taken
    ``after_step`` steps, plus ``delay_s``."""

    actions: tuple[str, ...]
    after_step: int
    delay_s: float


def check_actions(actions: Sequence[str], known: Sequence[str]) -> None:
    unknown = sorted(set(actions) - set(known))
    if unknown:
        raise ValueError(f"unknown chaos actions {unknown}; expected some of {list(known)}")
    if not actions:
        raise ValueError("no chaos actions")


def chaos_schedule(
    seed: int, actions: Sequence[str], first_step: int, steps_between: int, max_delay_s: float
) -> list[ChaosEvent]:
    """The actions in a seeded order, one every ``steps_between`` learner steps."""
    check_actions(actions, ACTIONS)
    rng = random.Random(seed)
    order = list(actions)
    rng.shuffle(order)
    return [
        ChaosEvent(action, first_step + i * steps_between, round(rng.uniform(0.0, max_delay_s), 2))
        for i, action in enumerate(order)
    ]


def random_schedule(
    seed: int,
    faults: int,
    actions: Sequence[str],
    first_step: int = 2,
    steps_between: int = 2,
    max_delay_s: float = 4.0,
    pair_chance: float = 0.5,
) -> list[ChaosWave]:
    """``faults`` faults drawn from ``actions`` by ``seed``, in waves of one or two fired at once.

    Every action is drawn once before any is drawn again, so a schedule at least as long as
    the action set has each of them. The two faults of a pair differ, and a schedule of 4
    or more faults over 2 or more actions has at least one pair.
    """
    check_actions(actions, RANDOM_ACTIONS)
    if faults < 1:
        raise ValueError(f"faults must be >= 1, got {faults}")
    distinct = list(dict.fromkeys(actions))
    rng = random.Random(seed)
    drawn: list[str] = []
    while len(drawn) < faults:
        round_ = list(distinct)
        rng.shuffle(round_)
        drawn += round_
    drawn = drawn[:faults]
    groups: list[tuple[str, ...]] = []
    i = 0
    while i < len(drawn):
        if i + 1 < len(drawn) and drawn[i] != drawn[i + 1] and rng.random() < pair_chance:
            groups.append((drawn[i], drawn[i + 1]))
            i += 2
        else:
            groups.append((drawn[i],))
            i += 1
    if faults >= 4 and all(len(g) == 1 for g in groups):
        # No pair was drawn: the first two neighbours that differ fire together.
        for j, (a, b) in enumerate(pairwise(groups)):
            if a != b:
                groups[j : j + 2] = [a + b]
                break
    return [
        ChaosWave(group, first_step + k * steps_between, round(rng.uniform(0.0, max_delay_s), 2))
        for k, group in enumerate(groups)
    ]


def fixed_waves(events: Sequence[ChaosEvent]) -> list[ChaosWave]:
    return [ChaosWave((e.action,), e.after_step, e.delay_s) for e in events]


def runnable_actions(actions: Sequence[str], clustered: bool, store_limited: bool) -> tuple[list[str], list[str]]:
    """The actions this run can take, and why the others are left out."""
    keep, notes = [], []
    for action in actions:
        if action == "kill_cluster_node" and not clustered:
            notes.append("kill_cluster_node left out: the bus is a single nats-server, not a cluster")
        elif action == "fill_store" and not store_limited:
            notes.append("fill_store left out: the bus has no store limit (bus.max_store_mib=0)")
        else:
            keep.append(action)
    return keep, notes


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


@dataclass(frozen=True)
class TreeRecord:
    """One line of the learner's ``metrics/learner_trees.jsonl``."""

    event: str  # "trained" (a checkpoint holds them), "step_skipped", "already_trained"
    tree_ids: tuple[str, ...]


@dataclass(frozen=True)
class TrainingReconciliation:
    distinct_trees: int  # distinct CompletedTree ids on the trees stream
    trained: int  # in a checkpoint: recorded as trained, or turned away as already trained
    skipped: int  # used by a step that changed no weight
    # Not yet made durable by the learner: still unacked on its durable when the run ended
    # (handed back at its clean stop, or emitted after it).
    waiting: int
    lost: list[str]  # acked or gone from the learner's durable, yet in no record
    trained_twice: list[str]
    # In a learner record but never on the trees stream.
    unknown_trained: list[str]

    def failures(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{len(self.lost)} tree(s) lost between the trees stream and the learner")
        if self.trained_twice:
            out.append(f"{len(self.trained_twice)} tree(s) trained twice")
        if self.unknown_trained:
            out.append(f"{len(self.unknown_trained)} tree(s) trained but never on the trees stream")
        return out


def reconcile_training(
    tree_ids: Iterable[str], records: Iterable[TreeRecord], waiting: Iterable[str]
) -> TrainingReconciliation:
    """Account for every CompletedTree against what the learner made durable; pure.

    ``tree_ids`` are the trees stream's messages (a tree emitted twice is one tree),
    ``records`` the learner's, across its restarts, ``waiting`` the tree ids still unacked on
    the learner's durable. A tree turned away as already trained has its step in a
    checkpoint even when the record of that checkpoint was lost with the learner that
    wrote it (killed between its checkpoint and its record), so it counts as trained.
    """
    on_stream = set(tree_ids)
    trained_records: Counter[str] = Counter()
    already: set[str] = set()
    skipped: set[str] = set()
    for record in records:
        if record.event == "trained":
            trained_records.update(record.tree_ids)
        elif record.event == "already_trained":
            already.update(record.tree_ids)
        elif record.event == "step_skipped":
            skipped.update(record.tree_ids)
        else:
            raise ValueError(f"unknown learner tree record {record.event!r}")
    trained = trained_records.keys() | already
    skipped -= trained
    settled = trained | skipped
    still_waiting = (set(waiting) & on_stream) - settled
    return TrainingReconciliation(
        distinct_trees=len(on_stream),
        trained=len(trained & on_stream),
        skipped=len(skipped & on_stream),
        waiting=len(still_waiting),
        lost=sorted(on_stream - settled - still_waiting),
        trained_twice=sorted(t for t, n in trained_records.items() if n > 1),
        unknown_trained=sorted(settled - on_stream),
    )


# ---------------------------------------------------------------------------- run records


def read_drop_records(run_dir: Path, shard: ShardConfig | None = None) -> list[DropRecord]:
    """The drop records of the allocator (of allocator shard ``shard``)."""
    from allocator.service import drops_metrics

    return [
        DropRecord(r["reason"], r["tree_id"], tuple(r["node_ids"]))
        for r in read_metrics(metrics_path(run_dir, drops_metrics(shard or ShardConfig())))
        if "node_ids" in r
    ]


def read_held(run_dir: Path, shard: ShardConfig | None = None) -> tuple[list[str], bool]:
    """Node ids the allocator's (shard's) last incarnation held at its clean stop, and whether it recorded one."""
    from allocator.service import held_metrics

    records = list(read_metrics(metrics_path(run_dir, held_metrics(shard or ShardConfig()))))
    stops = [r["incarnation"] for r in records if r.get("stopped")]
    if not stops:
        return [], False
    last = max(stops)
    return [i for r in records if r.get("incarnation") == last and "node_ids" in r for i in r["node_ids"]], True


def trained_tokens_past_bound(run_dir: Path) -> float:
    return float(sum(r.get("train.trained_tokens_past_bound") or 0.0 for r in learner_steps(run_dir)))


def read_tree_records(run_dir: Path) -> list[TreeRecord]:
    from learner.service import TREES_METRICS

    return [
        TreeRecord(r["event"], tuple(r["tree_ids"]))
        for r in read_metrics(metrics_path(run_dir, TREES_METRICS))
        if "tree_ids" in r
    ]


async def read_waiting_trees(
    run_dir: Path, run_id: str, servers: list[str], timeout_s: float
) -> tuple[list[str], bool]:
    """The tree ids still unacked on the learner's durable, and whether all of them were read.

    Run after the learner stopped. Fetching them (as admin, never acking) is the one way to
    name them; a message last delivered to a killed learner comes back once its ack_wait
    runs out, hence the timeout.
    """
    import nats.errors

    from bus.client import BusClient
    from protocol import CompletedTree, ProtocolError, decode
    from tracerl.config import BusConfig, RunConfig

    admin = await BusClient.connect("admin", BusConfig(servers=servers), RunConfig(run_id=run_id, run_dir=str(run_dir)))
    try:
        s = admin.subjects
        info = await admin.js.consumer_info(s.trees_stream, s.learner_consumer)
        expected = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        sub = await admin.js.pull_subscribe_bind(s.learner_consumer, stream=s.trees_stream)
        seen: dict[int, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):  # nothing to deliver yet
                continue
            for msg in msgs:
                try:
                    seen[msg.metadata.sequence.stream] = decode(msg.data, CompletedTree, run_id=run_id).tree_id
                except ProtocolError:
                    seen[msg.metadata.sequence.stream] = ""  # counted as read; names no tree
        await sub.unsubscribe()
        return sorted(set(seen.values()) - {""}), len(seen) >= expected
    finally:
        await admin.close()


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
    # "fixed": each action once, one at a time; "random": ``faults`` drawn, some fired at once.
    schedule: str = "fixed"
    # Empty means every action of the schedule (ACTIONS, or RANDOM_ACTIONS).
    actions: tuple[str, ...] = ()
    faults: int = 8
    # The first fault after this many learner steps, then one every steps_between steps.
    first_step: int = 2
    steps_between: int = 2
    max_delay_s: float = 4.0
    # The run ends (the learner is stopped cleanly) this many learner steps after the last
    # fault has ended: recovery is shown by training going on.
    steps_after: int = 2
    # How long a stalled actor stays stopped, a filled store stays full and a killed cluster
    # node stays down, in the streams' ack_waits: a stall must outlast one.
    fault_ack_waits: float = 1.5
    # A filled store holds this share of its limit: less room than a weights version takes
    # (4.4 MB of the 64 MiB of a random run), so the learner's publish is refused until it ends.
    fill_fraction: float = 0.95
    timeout_s: float = 1800.0
    drain_timeout_s: float = 60.0
    bus_restart_timeout_s: float = 30.0
    # Where the result files go; None means bench/results.
    results_dir: str | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.first_step < 1 or self.steps_between < 1 or self.steps_after < 1:
            raise ValueError("first_step, steps_between and steps_after must be >= 1")
        if self.faults < 1:
            raise ValueError(f"faults must be >= 1, got {self.faults}")
        if self.fault_ack_waits <= 1.0:
            raise ValueError(f"fault_ack_waits must be > 1 (a stall outlasts ack_wait), got {self.fault_ack_waits}")
        if not 0.0 < self.fill_fraction < 1.0:
            raise ValueError(f"fill_fraction must be in (0, 1), got {self.fill_fraction}")
        check_actions(self.schedule_actions, ACTIONS if self.schedule == "fixed" else RANDOM_ACTIONS)

    @property
    def schedule_actions(self) -> tuple[str, ...]:
        return self.actions or (ACTIONS if self.schedule == "fixed" else RANDOM_ACTIONS)


def plan_waves(options: ChaosOptions, clustered: bool, store_limited: bool) -> tuple[list[ChaosWave], list[str]]:
    """The run's waves of faults, and notes on the actions it cannot take."""
    if options.schedule == "fixed":
        events = chaos_schedule(
            options.seed, options.schedule_actions, options.first_step, options.steps_between, options.max_delay_s
        )
        return fixed_waves(events), []
    actions, notes = runnable_actions(options.schedule_actions, clustered, store_limited)
    waves = random_schedule(
        options.seed, options.faults, actions, options.first_step, options.steps_between, options.max_delay_s
    )
    return waves, notes


@dataclass
class EventRecord:
    action: str
    target: str
    learner_step: int
    at_s: float
    replacement: str = ""
    # Seconds from the fault to the learner's next step.
    recovery_s: float | None = None
    # The wave it fired in; faults of one wave fire at once.
    wave: int = 0
    # What the fault did beyond its target (how full the store got, ...).
    detail: str = ""
    # For a fault that lasts (a stall, a full store, a node down): when it ended.
    ended_s: float | None = None


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
    training: TrainingReconciliation | None = None
    # Whether every tree still waiting on the learner's durable could be read and named.
    waiting_read: bool = True
    schedule: str = "fixed"
    planned: list[list[str]] = field(default_factory=list)
    # The bus the run had: one nats-server or a cluster, and its store limit.
    bus: str = ""

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
        if self.training is None:
            out.append("no reconciliation of trees against training")
        else:
            out += self.training.failures()
        if not self.waiting_read:
            out.append("the trees waiting on the learner's durable could not all be read")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()


# The log event that says a restarted role serves again; the next wave waits for it, so
# each wave meets a system that had recovered from the one before. A replacement actor is
# not waited for (its engine takes a minute to start; the other actor carries on).
READY_EVENTS = {"kill_learner": ("learner", "learner_started"), "kill_allocator": ("allocator", "allocator_started")}


def _bus_healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/healthz", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def store_used(monitor_ports: Sequence[int]) -> int | None:
    """Bytes the fullest node's JetStream file store holds; None while no node answers."""
    used = []
    for port in monitor_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=1.0) as resp:
                used.append(int(json.loads(resp.read()).get("storage", 0)))
        except (urllib.error.URLError, OSError, ValueError):
            continue
    return max(used) if used else None


FILL_CHUNK = 1024 * 1024


class StoreFiller(threading.Thread):
    """Fills the JetStream store to ``target_bytes`` with a stream of its own, holds it there
    for ``hold_s``, then deletes the stream; through a bus restart if one comes meanwhile."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        servers: list[str],
        monitor_ports: list[int],
        replicas: int,
        target_bytes: int,
        hold_s: float,
        fill_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(name="chaos-fill-store", daemon=True)
        self.run_dir, self.run_id, self.servers = run_dir, run_id, servers
        self.monitor_ports, self.replicas = monitor_ports, replicas
        self.target_bytes, self.hold_s, self.fill_timeout_s = target_bytes, hold_s, fill_timeout_s
        self.stream = f"CHAOS_FILL_{run_id}"
        self.subject = f"chaos.{run_id}.fill"
        self.release = threading.Event()
        self.filled_bytes = 0
        self.peak_used = 0
        self.publish_errors = 0
        self.deleted = False
        self.error = ""

    def run(self) -> None:
        try:
            asyncio.run(self._fill_hold_delete())
        except Exception as err:  # noqa: BLE001 - reported in the event's detail
            self.error = repr(err)
            log.warning("chaos_fill_failed", error=self.error)

    def detail(self) -> str:
        mib = 1024 * 1024
        text = (
            f"{self.filled_bytes / mib:.0f} MiB filler took the store to {self.peak_used / mib:.1f} MiB "
            f"(target {self.target_bytes / mib:.1f}); {self.publish_errors} filler publishes refused"
        )
        if not self.deleted:
            text += "; filler NOT deleted"
        return text + (f"; {self.error}" if self.error else "")

    async def _until(self, what: str, action: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await action()
            except Exception as err:  # a bus restart in the same wave: retried
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what}: {err!r}") from err
                await asyncio.sleep(0.5)

    async def _fill_hold_delete(self) -> None:
        import nats.js.errors
        from nats.js import api

        from bus.client import BusClient
        from tracerl.config import BusConfig, RunConfig

        async def connect() -> BusClient:
            return await BusClient.connect(
                "admin", BusConfig(servers=self.servers), RunConfig(run_id=self.run_id, run_dir=str(self.run_dir))
            )

        admin = await self._until("connect", connect)
        try:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
            )
            await self._until("create the filler stream", lambda: admin.js.add_stream(config))
            chunk = os.urandom(FILL_CHUNK)
            deadline = time.monotonic() + self.fill_timeout_s
            while not self.release.is_set() and time.monotonic() < deadline:
                used = store_used(self.monitor_ports)
                if used is None:
                    await asyncio.sleep(0.5)
                    continue
                self.peak_used = max(self.peak_used, used)
                if used >= self.target_bytes:
                    break
                size = min(FILL_CHUNK, self.target_bytes - used)
                try:
                    await admin.js.publish(self.subject, chunk[:size], stream=self.stream, timeout=5.0)
                    self.filled_bytes += size
                except Exception:  # noqa: BLE001 - refused (full) or the bus is restarting
                    self.publish_errors += 1
                    await asyncio.sleep(0.5)
            hold_until = time.monotonic() + self.hold_s
            while not self.release.is_set() and time.monotonic() < hold_until:
                self.peak_used = max(self.peak_used, store_used(self.monitor_ports) or 0)
                await asyncio.sleep(0.5)

            async def delete() -> None:
                try:
                    await admin.js.delete_stream(self.stream)
                except nats.js.errors.NotFoundError:
                    pass

            await self._until("delete the filler stream", delete)
            self.deleted = True
        finally:
            await admin.close()


class ClusterNodes:
    """The nats-server nodes of a local cluster bus, one by one: kill a node, start it again.

    The bus process starts every node; a node killed alone is started again here, on the
    config file the bus wrote for it, and is this object's to stop (before the whole bus
    is restarted, and at the end).
    """

    def __init__(self, run_dir: Path, bus_config: Any) -> None:
        cluster = bus_config.cluster
        self.run_dir = run_dir
        self.server_binary = bus_config.server_binary
        self.memory_limit_mib = bus_config.memory_limit_mib
        self.stems = [f"nats-server-{cluster.name}-n{i}" for i in range(cluster.local_nodes)]
        self.down: set[str] = set()
        self.restarted: dict[str, subprocess.Popen[bytes]] = {}

    def kill(self, rng: random.Random) -> str:
        stem = rng.choice([s for s in self.stems if s not in self.down] or self.stems)
        own = self.restarted.pop(stem, None)
        if own is not None:
            own.kill()
            own.wait()
        else:
            try:
                os.kill(int((self.run_dir / f"{stem}.pid").read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass  # already gone
        self.down.add(stem)
        return stem

    def start_again(self, stem: str) -> bool:
        """Start a killed node again; False if a restart of the whole bus already did."""
        from bus.server import find_server_binary, server_environment

        if stem not in self.down:
            return False
        with open(self.run_dir / "logs" / f"{stem}.log", "ab") as out:
            self.restarted[stem] = subprocess.Popen(
                [find_server_binary(self.server_binary), "-c", str(self.run_dir / f"{stem}.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(os.environ, self.memory_limit_mib),
                start_new_session=True,
            )
        self.down.discard(stem)
        return True

    def stop_restarted(self) -> None:
        """Stop the nodes started here: before a restart of the whole bus, and at the end."""
        for process in self.restarted.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.restarted = {}
        self.down = set()


@dataclass
class Ongoing:
    """A fault that lasts: ``end`` ends it (and returns a detail), once ``ends_at`` passes or
    ``finished`` says it ended on its own."""

    record: EventRecord
    end: Callable[[], str]
    ends_at: float = float("inf")
    finished: Callable[[], bool] = lambda: False


class FaultInjector:
    """Fires the faults of a run and ends the ones that last."""

    def __init__(self, run: BenchRun, options: ChaosOptions, started: float) -> None:
        self.run = run
        self.options = options
        self.started = started
        self.rng = random.Random(options.seed + 1)  # which actor, which node
        bus = run.configs["bus"]
        self.bus_config = bus
        self.ack_wait_s = float(bus.streams.ack_wait_s)
        self.lasts_s = options.fault_ack_waits * self.ack_wait_s
        nodes = bus.cluster.local_nodes or 1
        self.monitor_ports = [bus.monitor_port + i for i in range(nodes)] if nodes > 1 else [bus.monitor_port]
        self.cluster = ClusterNodes(run.run_dir, bus) if bus.cluster.local_nodes else None
        self.next_actor = run.up.num_actors
        self.ongoing: list[Ongoing] = []
        self.stalled: set[str] = set()

    def _alive_actors(self, avoid: set[str]) -> list[str]:
        alive = sorted(n for n, p in self.run.supervisor.processes.items() if n.startswith("actor-") and p.alive)
        return [n for n in alive if n not in avoid] or alive

    def fire(self, action: str, wave: int, step: int, taken: set[str]) -> EventRecord:
        """One fault; ``taken`` are the targets of the wave so far (a pair hits two)."""
        from tracerl.supervisor import wait_for

        supervisor = self.run.supervisor
        record = EventRecord(action, "", step, round(time.time() - self.started, 1), wave=wave)
        if action == "kill_actor":
            victim = self.rng.choice(self._alive_actors(taken))
            new = f"actor-{self.next_actor}"
            self.next_actor += 1
            supervisor.kill(victim)
            self.stalled.discard(victim)
            self.run.start_actor(new, like=victim)
            record.target, record.replacement = victim, new
        elif action in ("kill_learner", "kill_allocator"):
            record.target = action.removeprefix("kill_")
            supervisor.restart(record.target)
        elif action == "restart_bus":
            if self.cluster is not None:
                self.cluster.stop_restarted()  # they hold the ports the bus starts its nodes on
            supervisor.restart("bus")
            record.target = "bus"
            wait_for(
                lambda: _bus_healthy(self.bus_config.monitor_port),
                self.options.bus_restart_timeout_s,
                what="the restarted bus",
            )
        elif action == "kill_cluster_node":
            if self.cluster is None:
                raise ValueError("kill_cluster_node needs a clustered bus")
            cluster = self.cluster
            stem = cluster.kill(self.rng)
            record.target = stem.removeprefix("nats-server-")

            def node_back(stem: str = stem) -> str:
                return "started again" if cluster.start_again(stem) else "back with the restarted bus"

            self.ongoing.append(Ongoing(record, node_back, ends_at=time.time() + self.lasts_s))
        elif action == "stall_actor":
            victim = self.rng.choice(self._alive_actors(taken | self.stalled))
            pgid = supervisor.processes[victim].popen.pid
            os.killpg(pgid, signal.SIGSTOP)
            self.stalled.add(victim)
            record.target = victim
            record.detail = f"SIGSTOP for {self.lasts_s:.0f} s (ack_wait {self.ack_wait_s:g} s)"

            def resume(victim: str = victim, pgid: int = pgid) -> str:
                self.stalled.discard(victim)
                try:
                    os.killpg(pgid, signal.SIGCONT)
                except ProcessLookupError:
                    return "killed while stalled"
                return "SIGCONT"

            self.ongoing.append(Ongoing(record, resume, ends_at=time.time() + self.lasts_s))
        elif action == "fill_store":
            limit = self.bus_config.max_store_mib * 1024 * 1024
            filler = StoreFiller(
                self.run.run_dir,
                self.run.up.run.run_id,
                self.run.servers,
                self.monitor_ports,
                self.bus_config.replicas,
                int(self.options.fill_fraction * limit),
                hold_s=self.lasts_s,
            )
            refused_before = self.refused_publishes()
            filler.start()
            record.target = f"store ({self.bus_config.max_store_mib} MiB limit)"

            def release(filler: StoreFiller = filler) -> str:
                filler.release.set()
                filler.join(90.0)
                weights, batches = (
                    now - before for now, before in zip(self.refused_publishes(), refused_before, strict=True)
                )
                return f"{filler.detail()}; meanwhile {weights} weight and {batches} message-batch publishes refused"

            def fill_finished(f: StoreFiller = filler) -> bool:
                return not f.is_alive()

            self.ongoing.append(Ongoing(record, release, finished=fill_finished))
        else:
            raise ValueError(f"unknown chaos action {action!r}")
        taken.update({record.target, record.replacement} - {""})
        log.info("chaos_event", **record.__dict__)
        print(
            f"[chaos] {record.at_s:6.1f}s step {record.learner_step} wave {wave}: {action} {record.target} "
            f"{('-> ' + record.replacement) if record.replacement else ''}{record.detail}",
            flush=True,
        )
        return record

    def refused_publishes(self) -> tuple[int, int]:
        """Weight publishes the learner retried and message batches any role saw refused, so far."""
        logs = self.run.run_dir / "logs"
        return (
            count_log_events(self.run.run_dir, "learner", "weights_publish_failed_will_retry"),
            sum(count_log_events(self.run.run_dir, p.stem, "publish_not_acked") for p in logs.glob("*.jsonl")),
        )

    def end_due(self, force: bool = False) -> None:
        """End the lasting faults whose time has come (all of them with ``force``)."""
        now = time.time()
        for item in list(self.ongoing):
            if force or now >= item.ends_at or item.finished():
                detail = item.end()
                item.record.ended_s = round(time.time() - self.started, 1)
                item.record.detail = "; ".join(d for d in (item.record.detail, detail) if d)
                self.ongoing.remove(item)
                log.info("chaos_event_ended", action=item.record.action, target=item.record.target, detail=detail)
                print(f"[chaos] {item.record.ended_s:6.1f}s: {item.record.action} ended: {detail}", flush=True)

    def close(self) -> None:
        self.end_due(force=True)
        if self.cluster is not None:
            self.cluster.stop_restarted()


def describe_bus(bus: Any) -> str:
    nodes = bus.cluster.local_nodes
    text = f"a {nodes}-node cluster, {bus.replicas} replicas" if nodes else "one nats-server"
    return text + (f", store limit {bus.max_store_mib} MiB" if bus.max_store_mib else "")


def run_chaos(options: ChaosOptions, up_overrides: list[str]) -> ChaosResult:
    """One chaos sample: the run, the faults, the reconciliation, and (fixed schedule) the result files."""
    # The harness ends the run, after the last fault: a learner that stopped at a fixed step
    # could finish before the faults have all fired.
    defaults = CHAOS_RUN if options.schedule == "fixed" else RANDOM_RUN
    up = bench_up_config(defaults, up_overrides, ["learner.training.max_steps=0"])
    run_dir = Path(up.run.run_dir)
    fresh_run_dir(run_dir, RUN_MARKER, "chaos")
    run = BenchRun(up, "chaos")
    supervisor = run.supervisor
    servers = run.servers
    bus = run.configs["bus"]
    waves, notes = plan_waves(options, clustered=bool(bus.cluster.local_nodes), store_limited=bus.max_store_mib > 0)
    log.info("chaos_started", run_dir=str(run_dir), seed=options.seed, schedule=[w.__dict__ for w in waves])
    print(
        f"[chaos] run {up.run.run_id} in {run_dir}; schedule: "
        + ", ".join(f"{'+'.join(w.actions)}@step{w.after_step}+{w.delay_s}s" for w in waves),
        flush=True,
    )
    for note in notes:
        print(f"[chaos] {note}", flush=True)

    events: list[EventRecord] = []
    crashed: list[str] = []
    finished = False
    started = time.time()
    step_now = run.step
    faults = FaultInjector(run, options, started)
    reconciliation = None
    training = None
    waiting_read = False

    try:
        run.start()
        pending = list(enumerate(waves, 1))
        due_at: float | None = None
        ready: list[tuple[str, str, int]] = []  # (log, event, count) the next wave waits for
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
            faults.end_due()
            ready = [r for r in ready if count_log_events(run_dir, r[0], r[1]) < r[2]]
            if pending and due_at is None and not ready and step_now() >= pending[0][1].after_step:
                due_at = time.time() + pending[0][1].delay_s
            if pending and due_at is not None and time.time() >= due_at:
                number, wave = pending.pop(0)
                taken: set[str] = set()
                try:
                    for action in wave.actions:
                        if action in READY_EVENTS:
                            name, event = READY_EVENTS[action]
                            ready.append((name, event, count_log_events(run_dir, name, event) + 1))
                        events.append(faults.fire(action, number, step_now(), taken))
                except TimeoutError as err:
                    crashed.append(str(err))
                    break
                due_at = None
            if not pending and not faults.ongoing and last_step is None:
                last_step = step_now() + options.steps_after
            run.tick()
            time.sleep(0.25)
        faults.end_due(force=True)
        if pending:
            notes.append(f"{len(pending)} wave(s) never fired: {[w.actions for _, w in pending]}")

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
        if supervisor.processes["learner"].alive:
            supervisor.stop("learner", timeout_s=120.0)
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
            waiting, waiting_read = asyncio.run(
                read_waiting_trees(run_dir, up.run.run_id, servers, timeout_s=2 * faults.ack_wait_s + 10.0)
            )
            training = reconcile_training((t for t, _ in trees), read_tree_records(run_dir), waiting)
    finally:
        faults.close()
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
        training=training,
        waiting_read=waiting_read,
        schedule=options.schedule,
        planned=[list(w.actions) for w in waves],
        bus=describe_bus(bus),
    )
    if options.schedule == "fixed":
        write_chaos_results(result, Path(options.results_dir) if options.results_dir else None)
    return result


def run_random_series(options: ChaosOptions, seeds: int, work_dir: Path, overrides: list[str]) -> list[ChaosResult]:
    """``seeds`` random schedules from ``options.seed`` on, each its own run; the results file
    is rewritten after every run, so an interrupted series keeps what it finished."""
    results: list[ChaosResult] = []
    for seed in range(options.seed, options.seed + seeds):
        run_id = f"chaos-random-s{seed}"
        per_seed = [f"run.run_id={run_id}", f"run.run_dir={work_dir / run_id}", *overrides]
        results.append(run_chaos(dataclasses.replace(options, seed=seed), per_seed))
        write_random_results(results, options, Path(options.results_dir) if options.results_dir else None)
    return results


# ---------------------------------------------------------------------------- results


def chaos_markdown(result: ChaosResult, title: str = "# Chaos run") -> str:
    r = result.reconciliation
    t = result.training
    lines = [
        title,
        "",
        (
            f"Seed {result.seed}, {result.schedule} schedule; {result.learner_steps} learner steps in "
            f"{result.wall_seconds:.0f} s; run directory `{result.run_dir}`"
            + (f"; the bus: {result.bus}." if result.bus else ".")
        ),
        "",
        "| # | wave | fault | target | at learner step | at s | ended at s | next learner step after (s) | detail |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(result.events, 1):
        target = f"{e.target} -> {e.replacement}" if e.replacement else e.target
        recovery = "n/a" if e.recovery_s is None else f"{e.recovery_s:.1f}"
        ended = "" if e.ended_s is None else f"{e.ended_s:.1f}"
        lines.append(
            f"| {i} | {e.wave} | {e.action} | {target} | {e.learner_step} | {e.at_s:.1f} | {ended} | {recovery} "
            f"| {e.detail} |"
        )
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
    if t is not None:
        row("trees trained (in a checkpoint)", t.trained)
        row("trees in a step that changed no weight", t.skipped)
        row("trees waiting, unacked, for the next learner", t.waiting)
        row("trees lost between the trees stream and the learner", len(t.lost), not t.lost)
        row("trees trained twice", len(t.trained_twice), not t.trained_twice)
        row("trees trained but never on the trees stream", len(t.unknown_trained), not t.unknown_trained)
    if r is not None:
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


def result_payload(result: ChaosResult) -> dict[str, Any]:
    return {**dataclasses.asdict(result), "ok": result.ok, "failures": result.failures()}


def write_chaos_results(result: ChaosResult, results_dir: Path | None = None) -> tuple[Path, Path]:
    from bench.runs import write_results

    return write_results("chaos", result_payload(result), chaos_markdown(result), results_dir)


def random_markdown(results: Sequence[ChaosResult], options: ChaosOptions) -> str:
    """Every seed's run of a random schedule: one summary row each, then each run in full."""
    lines = [
        "# Chaos runs, random schedules with overlapping faults",
        "",
        f"`tracerl bench chaos --schedule random --faults {options.faults}`: {len(results)} seed(s); each fault "
        "drawn from " + ", ".join(options.schedule_actions) + "; faults of one wave fire at once.",
        "",
        (
            "| seed | faults | waves (pairs) | learner steps | s | accepted nodes | nodes lost | trees "
            "| trees trained | trees waiting | trees lost | trained twice | tokens past bound | versions up | ok |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        r, t = res.reconciliation, res.training
        waves = Counter(e.wave for e in res.events)
        pairs = sum(1 for n in waves.values() if n > 1)
        nodes = f"{r.accepted_nodes} | {len(r.lost)}" if r else "n/a | n/a"
        trees = (
            f"{t.distinct_trees} | {t.trained} | {t.waiting} | {len(t.lost)} | {len(t.trained_twice)}"
            if t
            else "n/a | n/a | n/a | n/a | n/a"
        )
        past = f"{r.trained_tokens_past_bound:g}" if r else "n/a"
        up = ("yes" if r.versions_strictly_increasing else "**NO**") if r else "n/a"
        lines.append(
            f"| {res.seed} | {len(res.events)} | {len(waves)} ({pairs}) | {res.learner_steps} | {res.wall_seconds:.0f} "
            f"| {nodes} | {trees} | {past} | {up} | {'yes' if res.ok else '**NO**'} |"
        )
    for res in results:
        lines += ["", chaos_markdown(res, title=f"## Seed {res.seed}").rstrip()]
    return "\n".join(lines) + "\n"


def write_random_results(
    results: Sequence[ChaosResult], options: ChaosOptions, results_dir: Path | None = None
) -> tuple[Path, Path]:
    from bench.runs import write_results

    payload = {
        "schedule": "random",
        "faults": options.faults,
        "actions": list(options.schedule_actions),
        "seeds": [r.seed for r in results],
        "ok": all(r.ok for r in results),
        "runs": [result_payload(r) for r in results],
    }
    return write_results("chaos-random", payload, random_markdown(results, options), results_dir)
