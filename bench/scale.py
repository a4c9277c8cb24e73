"""`tracerl bench scale`: the control plane (the real nats-server and the real allocator) fed by
N simulated actors, for N in a sweep, to find how many actors one allocator and one bus serve.

A simulated actor is the real actor service (``actors.service.ActorService``: its pull loops,
episode loop over the real environment, node publishing with acks, heartbeats, weights
watcher) around ``SimulatedEngine``, an engine with no model that answers each turn after
``turn_seconds`` (drawn uniformly in [0.5, 1.5] of it) with ``tokens_per_turn`` tokens of a
thought and a well-formed action. So the wire behaviour is the real actor's, and only the
model is missing. Actor hosts (``tracerl bench scale-actors``) each run a share of the N
actors in one process, each actor with its own bus connection. A simulated learner
(``tracerl bench scale-learner``) consumes the trees, "trains" for ``learner_step_s`` per
step and publishes a new version of a tiny weights blob, which every actor fetches and
verifies as it would a real model's; its size is not the point here (``bench weight-sync``
measures that).

For each N, after a warm-up, over ``seconds``:

- ``nodes_per_s``: TurnNodes the allocator accepted per second (its ``core.nodes_accepted``);
- ``schedule_p99_ms``: the worst per-interval p99 of the allocator's ``schedule()`` wall
  time (``schedule_ms.p99`` of its metrics) and its median over intervals, and
  ``schedule_cpu_p99_ms``, the same for the call's thread CPU time. The ceiling is judged on
  the CPU time: on shared cores the wall time also measures the neighbours (the simulated
  actors among them);
- ``work_latency_s``: a work item's wait from its issue to an actor taking it (the actors'
  ``queue_wait_s``) plus a node's age on reaching the allocator (``node_age_s.p50``);
- ``allocator_rss_per_open_node_kib``: the allocator's resident memory above its level
  before any actor joined, per open node;
- CPU, in cores busy over the window, of the nats-server, the allocator and the actor hosts,
  and the allocator's CPU milliseconds per accepted node; the latter gives the projected
  ceiling of one allocator core, ``1000 / cpu_ms_per_node`` nodes/s.

The ceiling is the first N whose schedule CPU p99 passes 5 ms or whose throughput grew by less
than half the growth in actors from the previous N (``find_ceiling``).

With ``--shards K``, K allocator processes share the run (``allocator.shard``: the prompts
partitioned among them, each with 1/K of the step). A point then reports each shard's
nodes/s, schedule p99 and cores, and as the whole: the nodes/s of all shards, the worst
shard's p99, and the CPU of all shards per node. Results go to ``scale-k<K>.{md,json}``. On a 2-core machine
the actor hosts compete with the allocator and the bus for the same cores, so the run also
says when the hosts were the bottleneck; the per-node CPU cost is what carries over to a
machine where the allocator has its own core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.config import EngineSettings
from actors.engine import Generation
from bench.harness import BenchRun, bench_up_config, fresh_run_dir, last_record
from environments import tags
from protocol import SamplingSpec, replace
from tracerl.logs import get_logger
from tracerl.metrics import metrics_path, read_metrics

log = get_logger(__name__)

MARKER = ".bench-scale"
#: The allocator decision latency the control plane is sized by (DESIGN: schedule p99 < 5 ms).
TARGET_P99_MS = 5.0
#: Throughput must grow by at least this fraction of the growth in actors to count as scaling.
MIN_SCALING_EFFICIENCY = 0.5
#: The GPU actor the README's arithmetic assumes: an H100 serving a 14B model over its batch,
#: with agent turns of this many tokens.
GPU_ACTOR_TOKENS_PER_S = 2500.0
GPU_TURN_TOKENS = 250.0
#: The tensor of the simulated model: what the simulated learner publishes and every actor verifies.
SIM_TENSOR = "simulated.weight"

# The allocator at full TRACE with its own metrics every 2 s; no learner or actor role: the
# bench starts simulated ones. Steps grow with N (set per point), as a real run's batch would.
SCALE_RUN: dict[str, Any] = {
    "num_actors": 0,
    "eval_tasks": 0,
    "allocator.core.strategy": "trace",
    "allocator.core.group_size": 4,
    "allocator.core.staleness_eta": 2,
    "allocator.core.step_timeout_s": 120.0,
    "allocator.heldout.every_versions": 0,
    "allocator.metrics_interval_s": 2.0,
    # A step's tree learning spread over schedule() calls, one tree a call: with one prompt
    # per actor, learning a step in the call that closes it would hold the allocator for
    # about a second at 512 actors (allocator.core.learn_trees_per_call).
    "allocator.core.learn_trees_per_call": 1,
    # No learner role: the run's progress line (learner steps) would say nothing.
    "progress_interval_s": 1e9,
}


# ---------------------------------------------------------------------------- the pure part


@dataclass(frozen=True)
class ScalePoint:
    actors: int
    nodes_per_s: float
    schedule_p99_ms: float
    schedule_p99_ms_median: float
    schedule_cpu_p99_ms: float
    work_latency_s: float
    allocator_cpu_ms_per_node: float
    allocator_rss_per_open_node_kib: float | None
    open_nodes: float
    cores_busy: Mapping[str, float]
    # Each allocator shard's own figures when there are several (``--shards``).
    shards: tuple[ShardPoint, ...] = ()


@dataclass(frozen=True)
class ShardPoint:
    """One allocator shard's part of a point."""

    name: str
    nodes_per_s: float
    schedule_cpu_p99_ms: float
    schedule_p99_ms: float
    cores_busy: float
    cpu_ms_per_node: float
    open_nodes: float


def step_shape(actors: int, group_size: int, turns_per_episode: float = 3.0) -> dict[str, int]:
    """A step big enough to keep ``actors`` busy: one prompt per actor, with the budget for its
    group's episodes and as much again for TRACE's branches."""
    prompts = max(2, actors)
    return {
        "allocator.core.batch_prompts": prompts,
        "allocator.core.step_budget_turns": round(2 * prompts * group_size * turns_per_episode),
    }


def rate(first: Mapping[str, Any], last: Mapping[str, Any], key: str) -> float:
    """The per-second change of counter ``key`` between two metrics records."""
    seconds = float(last["time"]) - float(first["time"])
    if seconds <= 0:
        return 0.0
    return (float(last.get(key) or 0.0) - float(first.get(key) or 0.0)) / seconds


def scaling_efficiency(previous: ScalePoint, point: ScalePoint) -> float:
    """Throughput growth over actor growth between two points: 1 is linear scaling, 0 is none."""
    actor_growth = point.actors / previous.actors - 1.0
    if actor_growth <= 0 or previous.nodes_per_s <= 0:
        return float("nan")
    return (point.nodes_per_s / previous.nodes_per_s - 1.0) / actor_growth


def find_ceiling(points: Sequence[ScalePoint]) -> tuple[int | None, str]:
    """The first N at which the allocator's p99 passes the target or throughput stops growing
    with N, and why; ``(None, reason)`` if the sweep never reached it."""
    ordered = sorted(points, key=lambda p: p.actors)
    for index, point in enumerate(ordered):
        if point.schedule_cpu_p99_ms > TARGET_P99_MS:
            return point.actors, f"schedule p99 {point.schedule_cpu_p99_ms:.2f} CPU ms > {TARGET_P99_MS:g} ms"
        if index:
            efficiency = scaling_efficiency(ordered[index - 1], point)
            if efficiency < MIN_SCALING_EFFICIENCY:
                return point.actors, (
                    f"throughput grew {efficiency:.2f}x as fast as the actors from N={ordered[index - 1].actors} "
                    f"(< {MIN_SCALING_EFFICIENCY:g})"
                )
    top = ordered[-1].actors if ordered else 0
    return None, f"not reached up to N={top}"


def projected_node_ceiling(cpu_ms_per_node: float) -> float | None:
    """Nodes/s one allocator core takes at this CPU cost per node."""
    return 1000.0 / cpu_ms_per_node if cpu_ms_per_node > 0 else None


def gpu_actors_served(node_ceiling: float, gpu_tokens_per_s: float, tokens_per_turn: float) -> float:
    """Actors one allocator serves when each emits ``gpu_tokens_per_s`` in turns of ``tokens_per_turn``."""
    return node_ceiling / (gpu_tokens_per_s / tokens_per_turn)


# ---------------------------------------------------------------------------- simulated actor


class SimulatedEngine:
    """``actors.engine.PolicyEngine``'s interface with no model: each turn takes ``turn_seconds``
    (uniform in [0.5, 1.5] of it) and is a thought of filler tokens and then an action the
    search environments parse: a search, or with ``answer_probability`` an answer."""

    def __init__(
        self,
        tokenizer: Any,
        settings: EngineSettings,
        turn_seconds: float,
        tokens_per_turn: int,
        answer_probability: float,
        seed: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.turn_seconds = turn_seconds
        self.tokens_per_turn = tokens_per_turn
        self.answer_probability = answer_probability
        self.rng = random.Random(seed)
        self.policy_version = 0
        self.is_dead = False
        self.tokens_generated = self.turns_generated = self.prompt_tokens = self.cached_tokens = 0
        self.inflight_turns = 0
        self._filler = tokenizer.encode(" the", add_special_tokens=False) or [0]

    def _turn_ids(self) -> list[int]:
        if self.rng.random() < self.answer_probability:
            action = tags.answer("somebody")
        else:
            action = tags.search(f"mentor of person {self.rng.randrange(1000)}")
        head = self.tokenizer.encode(tags.think("looking"), add_special_tokens=False)
        tail = self.tokenizer.encode(" " + action, add_special_tokens=False)
        filler = max(0, self.tokens_per_turn - len(head) - len(tail))
        return head + self._filler * filler + tail

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        *,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        version = self.policy_version
        self.inflight_turns += 1
        try:
            await asyncio.sleep(self.turn_seconds * self.rng.uniform(0.5, 1.5))
        finally:
            self.inflight_turns -= 1
        ids = self._turn_ids()
        self.tokens_generated += len(ids)
        self.turns_generated += 1
        self.prompt_tokens += len(prompt_ids)
        return Generation(
            token_ids=ids,
            behaviour_logprobs=[-self.rng.random() for _ in ids],
            text=self.tokenizer.decode(ids, skip_special_tokens=False),
            num_prompt_tokens=len(prompt_ids),
            num_cached_tokens=0,
            finish_reason="stop",
            policy_version=version,
        )

    async def reload_weights(self, weights_dir: str | Path, policy_version: int) -> float:
        self.policy_version = policy_version
        return 0.0


def simulated_weights(version: int) -> bytes:
    """A safetensors blob of the simulated model; its values change with the version."""
    import numpy as np
    from safetensors.numpy import save

    return save({SIM_TENSOR: np.full((16, 16), float(version), dtype=np.float32)})


def make_simulated_model_dir(model_dir: str | Path, target: Path) -> Path:
    """The real model's tokenizer and config with the simulated model's weights."""
    target.mkdir(parents=True, exist_ok=True)
    for source in Path(model_dir).iterdir():
        if source.is_file() and source.suffix != ".safetensors":
            shutil.copy2(source, target / source.name)
    (target / "model.safetensors").write_bytes(simulated_weights(0))
    return target


async def serve_simulated_actors(
    config_path: Path, actor_ids: Sequence[str], turn_seconds: float, tokens_per_turn: int, answer_probability: float
) -> int:
    """Run ``actor_ids`` as real actor services over simulated engines until SIGTERM."""
    from transformers import AutoTokenizer

    from actors.config import ActorConfig
    from actors.service import ActorService
    from bus.client import BusClient
    from tracerl.config import load_config

    config = load_config(ActorConfig, config_path, [])
    tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
    services: list[ActorService] = []
    clients: list[BusClient] = []
    for index, actor_id in enumerate(actor_ids):
        client = await BusClient.connect("actor", config.bus, config.run, actor_id=actor_id)
        engine = SimulatedEngine(
            tokenizer, config.engine, turn_seconds, tokens_per_turn, answer_probability, seed=hash(actor_id) + index
        )
        own = replace(config, actor_id=actor_id)
        services.append(ActorService(own, engine, client, actor_id))  # type: ignore[arg-type]
        clients.append(client)

    def stop_all() -> None:
        for service in services:
            service.stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    codes = await asyncio.gather(*(s.serve() for s in services), return_exceptions=True)
    for client in clients:
        await client.close()
    failed = [c for c in codes if c != 0]
    if failed:
        print(f"simulated actors: {len(failed)} ended badly: {failed[:3]}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- simulated learner


async def serve_simulated_learner(config_path: Path, step_seconds: float) -> int:
    """Take the allocator's trees; after each step's last tree, wait ``step_seconds`` and
    publish the next version of the simulated weights, pruned as the real learner prunes."""
    from bus.client import BusClient, Delivery
    from learner.batching import step_is_whole
    from learner.config import LearnerConfig
    from learner.weights_retention import prune_weights, weights_announcement
    from protocol import CompletedTree
    from tracerl.config import load_config

    config = load_config(LearnerConfig, config_path, [])
    training = config.training
    bus = await BusClient.connect("learner", config.bus, config.run)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    step_trees: dict[int, list[CompletedTree]] = {}
    version = trees = 0

    async def publish(new_version: int) -> None:
        blob = simulated_weights(new_version)
        announcement = weights_announcement(config.run.run_id, new_version, blob, time.time())
        await bus.put_object(announcement.object_name, blob)
        await bus.announce_weights(announcement)
        await prune_weights(bus, new_version, training.staleness_eta, training.weights_actor_timeout_s, time.time())

    async def on_tree(tree: CompletedTree, delivery: Delivery) -> None:
        nonlocal version, trees
        trees += 1
        seen = step_trees.setdefault(tree.allocator_step, [])
        seen.append(tree)
        if step_is_whole(seen):
            del step_trees[tree.allocator_step]
            await asyncio.sleep(step_seconds)
            version += 1
            await publish(version)

    await publish(0)
    consumer = await bus.pull_consumer(bus.subjects.trees_stream, bus.subjects.learner_consumer, CompletedTree)
    await consumer.run(on_tree, stop, batch=64, timeout=0.5)
    await consumer.close()
    await bus.close()
    print(f"simulated learner: {trees} trees, version {version}", flush=True)
    return 0


# ---------------------------------------------------------------------------- the shell


@dataclass(frozen=True)
class ScaleOptions:
    actors: tuple[int, ...] = (8, 32, 128, 512)
    seconds: float = 60.0
    warmup_s: float = 30.0
    turn_seconds: float = 2.0
    tokens_per_turn: int = 48
    answer_probability: float = 0.35
    learner_step_s: float = 1.0
    actors_per_host: int = 128
    shards: int = 1
    work_dir: str = "runs/bench-scale"
    results_dir: str | None = None
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.actors or min(self.actors) < 1:
            raise ValueError("--actors must list positive counts")
        if self.seconds <= 0 or self.warmup_s < 0 or self.turn_seconds <= 0 or self.learner_step_s < 0:
            raise ValueError("--seconds and --turn-seconds must be > 0, --warmup-s and --learner-step-s >= 0")
        if self.tokens_per_turn < 8 or not 0 < self.answer_probability <= 1 or self.actors_per_host < 1:
            raise ValueError("--tokens-per-turn >= 8, 0 < --answer-probability <= 1, --actors-per-host >= 1")
        if self.shards < 1:
            raise ValueError("--shards must be >= 1")

    @property
    def results_name(self) -> str:
        return "scale" if self.shards == 1 else f"scale-k{self.shards}"

    @property
    def shard_names(self) -> list[str]:
        """The allocator shards' process (and metrics) names."""
        from allocator.shard import ShardConfig

        return [ShardConfig(index=index, count=self.shards).role_name for index in range(self.shards)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its living descendants (0 if it is gone)."""
    import psutil

    from bench.soak import process_tree

    total = 0.0
    for proc in process_tree(pid) or []:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def rss_bytes(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return float("nan")


def role_pids(run: BenchRun) -> dict[str, list[int]]:
    """The processes whose CPU the point reports: the nats-server, the allocator, the actor hosts."""
    pids: dict[str, list[int]] = {"allocator": [], "nats_server": [], "actor_hosts": [], "learner_sim": []}
    for name, proc in run.supervisor.processes.items():
        if name == "allocator" or name.startswith("allocator-"):
            pids["allocator"].append(proc.popen.pid)
        elif name.startswith("scale-actors"):
            pids["actor_hosts"].append(proc.popen.pid)
        elif name == "scale-learner":
            pids["learner_sim"].append(proc.popen.pid)
    pid_file = run.run_dir / "nats-server.pid"
    if pid_file.is_file():
        pids["nats_server"].append(int(pid_file.read_text().split()[0]))
    return pids


def cpu_by_role(pids: Mapping[str, Sequence[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(pid) for pid in group) for role, group in pids.items()}


def allocator_records(run_dir: Path, since: float, until: float, name: str = "allocator") -> list[dict[str, Any]]:
    """The metrics records of allocator (shard) ``name`` in ``[since, until]``."""
    return [
        r
        for r in read_metrics(metrics_path(run_dir, name))
        if "live_actors" in r and since <= float(r["time"]) <= until
    ]


def actor_queue_wait_s(run_dir: Path, since: float, until: float) -> float:
    """The mean of the actors' per-interval queue waits (issue to take) in the window."""
    waits = []
    for path in (run_dir / "metrics").glob("actor-*.jsonl"):
        for record in read_metrics(path):
            if since <= float(record.get("time", 0)) <= until and record.get("queue_wait_s") is not None:
                waits.append(float(record["queue_wait_s"]))
    return statistics.fmean(waits) if waits else float("nan")


def host_argv(config: Path, ids: Sequence[str], options: ScaleOptions) -> list[str]:
    return [
        "bench",
        "scale-actors",
        "--config",
        str(config),
        "--actor-ids",
        ",".join(ids),
        "--turn-seconds",
        str(options.turn_seconds),
        "--tokens-per-turn",
        str(options.tokens_per_turn),
        "--answer-probability",
        str(options.answer_probability),
    ]


def measure_point(actors: int, options: ScaleOptions, overrides: Sequence[str]) -> ScalePoint:
    from tracerl.up import start_roles, write_role_config

    run_dir = Path(options.work_dir) / f"scale-{actors}"
    fresh_run_dir(run_dir, MARKER, "scale")
    shape = [f"{k}={v}" for k, v in step_shape(actors, int(SCALE_RUN["allocator.core.group_size"])).items()]
    shards = [f"allocator.shard.count={options.shards}"] if options.shards > 1 else []
    up = bench_up_config(
        SCALE_RUN, [f"run.run_dir={run_dir}", *shape, *shards, *overrides], ["num_actors=0", "eval_tasks=0"]
    )
    names = options.shard_names
    with BenchRun(up, f"scale N={actors}") as run:
        start_roles(run.supervisor, up, ["bus", *names], run.config_dir)
        failure = run.wait_until(
            lambda: all(allocator_records(run.run_dir, 0, float("inf"), name) for name in names),
            options.start_timeout_s,
            "the allocator",
        )
        if failure:
            raise RuntimeError(f"N={actors}: {failure}")
        shard_pids = {name: run.supervisor.processes[name].popen.pid for name in names}
        base_rss = sum(rss_bytes(pid) for pid in shard_pids.values())
        sim_model = make_simulated_model_dir(run.model_dir, run.run_dir / "simulated-model")
        actor_config = replace(
            up.actor, bus=run.configs["allocator"].bus, model_dir=str(sim_model), run=up.run, log=up.log
        )
        actor_path = write_role_config(run.config_dir, "scale-actors", actor_config)
        learner_path = run.config_dir / "learner.yaml"
        run.supervisor.start(
            "scale-learner",
            ["bench", "scale-learner", "--config", str(learner_path), "--step-seconds", str(options.learner_step_s)],
        )
        ids = [f"sim-{i}" for i in range(actors)]
        for host, first in enumerate(range(0, actors, options.actors_per_host)):
            run.supervisor.start(
                f"scale-actors-{host}", host_argv(actor_path, ids[first : first + options.actors_per_host], options)
            )
        failure = run.wait_until(
            lambda: (last_record(run.run_dir, "allocator", "live_actors").get("live_actors") or 0) >= actors,
            options.start_timeout_s,
            f"{actors} actors to register",
        )
        if failure:
            raise RuntimeError(f"N={actors}: {failure}")
        failure = hold(run, options.warmup_s)
        pids = role_pids(run)
        cpu_start, shard_cpu_start, window_start = cpu_by_role(pids), cpu_by_role(_each(shard_pids)), time.time()
        failure = failure or hold(run, options.seconds)
        cpu_end, shard_cpu_end, window_end = cpu_by_role(pids), cpu_by_role(_each(shard_pids)), time.time()
        end_rss = sum(rss_bytes(pid) for pid in shard_pids.values())
        # The simulated roles first: the bus must outlive their goodbyes.
        run.stop_each(["scale-learner", *(n for n in run.supervisor.processes if n.startswith("scale-actors"))])
        if failure:
            raise RuntimeError(f"N={actors}: {failure}")
    seconds = window_end - window_start
    shard_cores = {name: (shard_cpu_end[name] - shard_cpu_start[name]) / seconds for name in names}
    return summarise_point(
        actors, run_dir, window_start, window_end, cpu_start, cpu_end, base_rss, end_rss, shard_cores
    )


def _each(pids: Mapping[str, int]) -> dict[str, list[int]]:
    return {name: [pid] for name, pid in pids.items()}


def hold(run: BenchRun, seconds: float) -> str | None:
    """Let the run go on for ``seconds``; the failure of a role that exited meanwhile, if any."""
    until = time.time() + seconds
    return run.wait_until(lambda: time.time() >= until, seconds + 60.0, f"{seconds:.0f} s")


def _p99s(records: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """A shard's per-interval p99s of ``key`` (the first record's interval began before the window)."""
    return [float(r[key]) for r in records[1:] if r.get(key) is not None]


def _accepted(records: Sequence[Mapping[str, Any]]) -> float:
    return float(records[-1].get("core.nodes_accepted") or 0.0) - float(records[0].get("core.nodes_accepted") or 0.0)


def _worst(values: Sequence[float]) -> float:
    return max(values) if values else float("nan")


def summarise_point(
    actors: int,
    run_dir: Path,
    window_start: float,
    window_end: float,
    cpu_start: Mapping[str, float],
    cpu_end: Mapping[str, float],
    base_rss: float,
    end_rss: float,
    shard_cores: Mapping[str, float] | None = None,
) -> ScalePoint:
    """The point over every allocator shard in ``shard_cores`` (by default the single allocator):
    nodes/s added up, the worst shard's p99, CPU per node over all of them."""
    names = list(shard_cores) if shard_cores else ["allocator"]
    by_shard = {name: allocator_records(run_dir, window_start - 2.5, window_end + 2.5, name) for name in names}
    for name, records in by_shard.items():
        if len(records) < 2:
            raise RuntimeError(f"N={actors}: fewer than two {name} metrics records in the window")
    seconds = window_end - window_start
    p99s = [v for records in by_shard.values() for v in _p99s(records, "schedule_ms.p99")]
    cpu_p99s = [v for records in by_shard.values() for v in _p99s(records, "schedule_cpu_ms.p99")]
    ages = [v for records in by_shard.values() for v in _p99s(records, "node_age_s.p50")]
    cores = {role: (cpu_end[role] - cpu_start[role]) / seconds for role in cpu_end}
    accepted = sum(_accepted(records) for records in by_shard.values())

    def open_nodes_of(records: Sequence[Mapping[str, Any]]) -> float:
        return statistics.fmean(float(r.get("core.open_nodes") or 0.0) for r in records)

    open_nodes = sum(open_nodes_of(records) for records in by_shard.values())
    shards: tuple[ShardPoint, ...] = ()
    if shard_cores and len(names) > 1:
        shards = tuple(
            ShardPoint(
                name=name,
                nodes_per_s=rate(records[0], records[-1], "core.nodes_accepted"),
                schedule_cpu_p99_ms=_worst(_p99s(records, "schedule_cpu_ms.p99")),
                schedule_p99_ms=_worst(_p99s(records, "schedule_ms.p99")),
                cores_busy=shard_cores[name],
                cpu_ms_per_node=1000.0 * shard_cores[name] * seconds / _accepted(records)
                if _accepted(records)
                else float("nan"),
                open_nodes=open_nodes_of(records),
            )
            for name, records in by_shard.items()
        )
    return ScalePoint(
        actors=actors,
        nodes_per_s=sum(rate(records[0], records[-1], "core.nodes_accepted") for records in by_shard.values()),
        schedule_p99_ms=_worst(p99s),
        schedule_p99_ms_median=statistics.median(p99s) if p99s else float("nan"),
        schedule_cpu_p99_ms=_worst(cpu_p99s),
        work_latency_s=actor_queue_wait_s(run_dir, window_start, window_end)
        + (statistics.median(ages) if ages else float("nan")),
        allocator_cpu_ms_per_node=1000.0 * cores["allocator"] * seconds / accepted if accepted else float("nan"),
        allocator_rss_per_open_node_kib=(end_rss - base_rss) / 1024.0 / open_nodes if open_nodes else None,
        open_nodes=open_nodes,
        cores_busy=cores,
        shards=shards,
    )


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def scale_markdown(points: Sequence[ScalePoint], options: ScaleOptions, settings: Mapping[str, Any]) -> str:
    ceiling, why = find_ceiling(points)
    lines = [
        "# Control plane to its ceiling" + ("" if options.shards == 1 else f", {options.shards} allocator shards"),
        "",
        "The real nats-server and the real allocator (TRACE, one prompt per actor per step) fed by N simulated actors "
        "(the real actor service over an engine with no model; bench/scale.py) and a simulated learner. "
        f"Turns take {options.turn_seconds:g} s on average and carry {options.tokens_per_turn} tokens; "
        f"warm-up {options.warmup_s:g} s, window {options.seconds:g} s; "
        f"{options.actors_per_host} actors per host process; "
        f"machine: {os.cpu_count()} cores.",
        "",
        "| N | nodes/s | schedule p99 CPU ms | schedule p99 wall ms (worst / median interval) | work latency s "
        "| allocator CPU ms/node | allocator KiB/open node | open nodes | cores: nats / allocator / actor hosts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p.actors):
        c = p.cores_busy
        lines.append(
            f"| {p.actors} | {_num(p.nodes_per_s, 1)} | {_num(p.schedule_cpu_p99_ms)} "
            f"| {_num(p.schedule_p99_ms)} / {_num(p.schedule_p99_ms_median)} "
            f"| {_num(p.work_latency_s)} | {_num(p.allocator_cpu_ms_per_node, 3)} "
            f"| {_num(p.allocator_rss_per_open_node_kib, 1)} | {_num(p.open_nodes, 0)} "
            f"| {_num(c.get('nats_server'))} / {_num(c.get('allocator'))} / {_num(c.get('actor_hosts'))} |"
        )
    sharded = [p for p in sorted(points, key=lambda p: p.actors) if p.shards]
    if sharded:
        lines += [
            "",
            f"{options.shards} allocator shards: the table's nodes/s add up the shards, its p99 is the worst shard's "
            "and its allocator CPU per node is all shards' CPU over all their nodes. Each shard:",
            "",
            "| N | shard | nodes/s | schedule p99 CPU ms | schedule p99 wall ms | allocator CPU ms/node "
            "| open nodes | cores |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in sharded:
            for shard in p.shards:
                lines.append(
                    f"| {p.actors} | {shard.name} | {_num(shard.nodes_per_s, 1)} | {_num(shard.schedule_cpu_p99_ms)} "
                    f"| {_num(shard.schedule_p99_ms)} | {_num(shard.cpu_ms_per_node, 3)} "
                    f"| {_num(shard.open_nodes, 0)} | {_num(shard.cores_busy)} |"
                )
    lines += ["", f"Ceiling: {'N = ' + str(ceiling) if ceiling else 'none'} ({why})."]
    costs = [p.allocator_cpu_ms_per_node for p in points if p.allocator_cpu_ms_per_node == p.allocator_cpu_ms_per_node]
    if costs:
        worst = max(costs)
        projected = projected_node_ceiling(worst)
        lines.append(
            f"One allocator core at the sweep's worst cost per node ({worst:.3f} ms) takes "
            f"{_num(projected, 0)} nodes/s."
        )
        for cost in sorted({worst, min(costs)}):
            ceiling_nodes = projected_node_ceiling(cost)
            if ceiling_nodes:
                served = gpu_actors_served(ceiling_nodes, GPU_ACTOR_TOKENS_PER_S, GPU_TURN_TOKENS)
                lines.append(
                    f"At {cost:.3f} CPU ms per node, one allocator core serves {served:.0f} GPU actors of "
                    f"{GPU_ACTOR_TOKENS_PER_S:g} tokens/s in turns of {GPU_TURN_TOKENS:g} tokens (assumed)."
                )
    return "\n".join(lines) + "\n"


def run_scale_bench(options: ScaleOptions, overrides: Sequence[str]) -> dict[str, Any]:
    from bench.runs import write_results

    points: list[ScalePoint] = []
    failures: dict[str, str] = {}
    for actors in options.actors:
        print(f"[bench scale] N={actors}: starting", flush=True)
        try:
            point = measure_point(actors, options, overrides)
        except RuntimeError as err:
            failures[str(actors)] = str(err)
            print(f"[bench scale] N={actors}: failed: {err}", flush=True)
            continue
        points.append(point)
        print(
            f"[bench scale] N={actors}: {point.nodes_per_s:.1f} nodes/s, "
            f"schedule p99 {point.schedule_cpu_p99_ms:.2f} CPU ms "
            f"({point.schedule_p99_ms:.2f} wall), "
            f"allocator {point.allocator_cpu_ms_per_node:.3f} CPU ms/node",
            flush=True,
        )
        for shard in point.shards:
            print(
                f"[bench scale] N={actors} {shard.name}: {shard.nodes_per_s:.1f} nodes/s, "
                f"schedule p99 {shard.schedule_cpu_p99_ms:.2f} CPU ms ({shard.schedule_p99_ms:.2f} wall)",
                flush=True,
            )
    ceiling, why = find_ceiling(points)
    costs = [p.allocator_cpu_ms_per_node for p in points if p.allocator_cpu_ms_per_node == p.allocator_cpu_ms_per_node]
    settings = {**dataclasses.asdict(options), "overrides": list(overrides), "cpu_count": os.cpu_count()}
    payload = {
        "settings": settings,
        "points": [dataclasses.asdict(p) for p in points],
        "failures": failures,
        "ceiling_actors": ceiling,
        "ceiling_reason": why,
        "allocator_cpu_ms_per_node_worst": max(costs) if costs else None,
        "projected_nodes_per_s_one_allocator_core": projected_node_ceiling(max(costs)) if costs else None,
    }
    write_results(
        options.results_name,
        payload,
        scale_markdown(points, options, settings),
        Path(options.results_dir) if options.results_dir else None,
    )
    return payload
