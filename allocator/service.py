"""`tracerl allocator`: the NATS shell around ``AllocatorCore``.

It moves data only: TurnNodes from the nodes stream into the core, the learner's policy
version from the KV bucket into the core, the core's routed WorkItems onto the work
subjects, and finished trees onto the trees stream. Held-out probes ride the same actors
and are tallied by ``allocator.heldout``.

A restarted allocator first rebuilds its core from the run's streams (``rebuild_from_streams``:
the trees already emitted, the work still queued, every node received), then consumes
live. Nodes the replay has applied are acked without a second pass through the core when
the durable consumer redelivers them.

Work routed to an actor's own subject (its prefix is in that actor's KV cache) waits there
for that actor. When the actor is gone (no heartbeat within ``actor_timeout_s``, or
deregistered), the allocator sends the unfinished items to the shared queue again; if the
actor comes back and runs its copy too, that is another sampling of the item, with node
ids of its own (``allocator.tree``).

Every node the core drops is recorded by id in ``metrics/allocator_drops.jsonl`` before
the trees of its step are published, and a clean stop records the nodes its open trees
hold in ``metrics/allocator_held.jsonl``, so a run can be reconciled node by node
(``bench.chaos``).

An allocator shard (``allocator.shard``, K > 1) is the same shell over its own part of the
task pool: it consumes its own nodes subjects through its own durable, rebuilds from its own
trees, work and nodes only, and writes its metrics and records under its own name
(``ShardConfig.role_name``: ``allocator-<k>`` for k > 0). Held-out probes are shard 0's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from nats.js import api

from allocator.config import AllocatorConfig
from allocator.core import ActorLoad, AllocatorCore, DropReason, RoutedWork
from allocator.heldout import HeldoutProbes, is_probe_tree
from allocator.shard import ShardConfig, shard_pool
from bus.client import BusClient, Delivery, PullConsumer
from bus.permissions import ACTOR_MISMATCH
from bus.streams import read_stream, read_work_queue, stream_extent
from environments.registry import make_env, make_tasks
from protocol import CompletedTree, Heartbeat, ProtocolError, Subjects, TaskSpec, TurnNode, WorkItem, replace
from tracerl.config import write_resolved_config
from tracerl.lifecycle import EXIT_STOP_OVERRAN, end_tasks, run_role, sleep_or_stop, stop_on_signals
from tracerl.logs import configure_logging, get_logger
from tracerl.metrics import LatencyWindow, MetricsWriter, role_metrics

log = get_logger(__name__)


def drops_metrics(shard: ShardConfig) -> str:
    return f"{shard.role_name}_drops"


def held_metrics(shard: ShardConfig) -> str:
    """Written once at a clean stop: the node ids held in open trees, which a restarted
    allocator would replay. Only the last incarnation's record describes the end of a run."""
    return f"{shard.role_name}_held"


#: Why a node was recorded as dropped by the shell: it came on another allocator shard's subject.
WRONG_SHARD = "wrong_shard"


def live_actor_loads(actors: dict[str, Heartbeat], now: float, timeout_s: float) -> list[ActorLoad]:
    return [
        ActorLoad(actor_id=beat.actor_id, inflight=beat.inflight, capacity=beat.capacity)
        for beat in actors.values()
        if now - beat.sent_at <= timeout_s
    ]


class PromptTexts:
    """Prompt text per task for the predictor's features, computed once per task."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], str] = {}

    def __call__(self, task: TaskSpec) -> str:
        key = (task.env, task.task_id)
        text = self._cache.get(key)
        if text is None:
            text = make_env(task.env).reset(task)
            self._cache[key] = text
        return text


@dataclass(frozen=True)
class ReplaySummary:
    """What a restarted allocator rebuilt its core from."""

    policy_version: int
    trees: int
    work_items: int
    nodes: int
    # The last nodes-stream sequence applied: the durable's redeliveries up to it are skipped.
    nodes_until_seq: int
    # Node outcomes in the replay (accepted, duplicate, late, ...) and undecodable messages.
    node_outcomes: dict[str, int]
    rejected: int
    open_steps: int
    open_trees: int
    seconds: float


async def rebuild_from_streams(
    core: AllocatorCore, bus: BusClient, now: float
) -> tuple[ReplaySummary, dict[str, tuple[str, WorkItem]]]:
    """Replay the run's streams into a fresh ``core`` (see ``allocator.replay``).

    The nodes stream is read up to its last sequence at the start: nodes stored later come
    through the durable consumer like any live node. Held-out probe messages are skipped;
    an interrupted probe is simply not tallied. Also returns the queued items that wait on
    an actor's own subject, by work id, with that actor's id. Only ``core.shard``'s own
    trees, work and nodes are replayed: the other shards' are theirs.
    """
    started = time.monotonic()
    s = bus.subjects
    # The live consumer's rules: a message it would refuse must not enter the core by replay.
    rules: dict[str, Any] = {"run_id": s.run_id, "max_bytes": bus.bus.max_message_bytes}
    version = await bus.get_policy_version() or 0
    core.on_policy_version(version)
    nodes_until = (await stream_extent(bus.js, s.nodes_stream)).last_seq
    shard = core.shard.index
    rejected = trees = work_items = nodes = 0
    async for _, _, tree in read_stream(bus.js, s.trees_stream, s.trees, CompletedTree, **rules):
        if isinstance(tree, ProtocolError):
            rejected += 1
            continue
        if tree.shard != shard:
            continue
        core.restore_emitted(tree.tree_id, [n.node_id for n in tree.nodes])
        trees += 1
    routed: dict[str, tuple[str, WorkItem]] = {}
    actor_prefix = s.work_for_actor("x")[:-1]
    async for _, subject, item in read_work_queue(bus.js, s.work_stream, s.work_all, WorkItem, **rules):
        if isinstance(item, ProtocolError):
            rejected += 1
            continue
        if item.shard == shard and not is_probe_tree(item.tree_id):
            core.restore_work(item, now)
            work_items += 1
            if subject.startswith(actor_prefix):
                routed[item.work_id] = (subject[len(actor_prefix) :], item)
    outcomes: dict[str, int] = {}
    async for _, subject, node in read_stream(
        bus.js, s.nodes_stream, s.nodes_for_shard(shard), TurnNode, until_seq=nodes_until, **rules
    ):
        if isinstance(node, ProtocolError) or not sent_by_claimed_actor(s, subject, node):
            # A node claiming another actor was dropped (and recorded) when it first arrived.
            rejected += 1
            continue
        if not is_probe_tree(node.tree_id):
            outcome = core.restore_node(node, now)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            nodes += 1
    core.finish_replay()
    summary = ReplaySummary(
        policy_version=version,
        trees=trees,
        work_items=work_items,
        nodes=nodes,
        nodes_until_seq=nodes_until,
        node_outcomes=outcomes,
        rejected=rejected,
        open_steps=len(core.steps),
        open_trees=len(core.trees),
        seconds=time.monotonic() - started,
    )
    return summary, routed


def sent_by_claimed_actor(subjects: Subjects, subject: str, node: TurnNode) -> bool:
    """Whether ``node`` came on the nodes subject of the actor it names: the server lets an
    actor with its own credential publish only on its own, so the subject is the proof."""
    return subjects.sender_of_node(subject) == node.actor_id


class AllocatorService:
    def __init__(self, config: AllocatorConfig, bus: BusClient) -> None:
        self.config = config
        self.bus = bus
        shard = config.shard
        tasks = config.tasks
        pool = shard_pool(make_tasks(tasks.env, "train", tasks.train_tasks, tasks.seed, **tasks.options), shard)
        heldout = make_tasks(tasks.env, "heldout", config.heldout.tasks, tasks.seed, **config.heldout.options)
        self.core = AllocatorCore(
            config.shard_core, pool, config.run.seed, run_id=config.run.run_id, prompt_text=PromptTexts(), shard=shard
        )
        # One shard probes the held-out set: K probes of one version would say nothing new.
        probing = config.heldout if shard.index == 0 else replace(config.heldout, every_versions=0)
        self.probes = HeldoutProbes(probing, heldout, config.run.run_id)
        self.metrics = role_metrics(config.run, config.log, shard.role_name, step_key="step")
        self.drops = MetricsWriter(config.run.run_dir, drops_metrics(shard))
        self.nodes_dropped = 0
        # Nodes up to this stream sequence were applied by the replay at start.
        self.replayed_until_seq = 0
        self.replay_skipped = 0
        self.incarnation = time.time()
        self.actors: list[ActorLoad] = []
        self.steps_emitted = 0
        self.trees_emitted = 0
        self.work_published = 0
        self.publish_failures = 0
        # (subject, message, msg id) decided by the core or the probes, not yet acked by the bus.
        self.outbox: list[tuple[str, Any, str]] = []
        # Work id -> (actor id, item) of items sent to an actor's own subject, until finished.
        self.routed: dict[str, tuple[str, WorkItem]] = {}
        self.rerouted = 0
        self.registry_read = False
        self.stop = asyncio.Event()
        # Per metrics interval: the wall time of each schedule() call (the decision latency the
        # control plane is sized by), and each node's age on arrival (its actor's publish to here).
        self.schedule_latency = LatencyWindow()
        # Its thread CPU time too: on shared cores the wall time also measures the neighbours.
        self.schedule_cpu = LatencyWindow()
        self.node_age = LatencyWindow()

    async def on_node(self, node: TurnNode, delivery: Delivery) -> None:
        now = time.time()
        self.node_age.add(max(0.0, now - node.created_at))
        if is_probe_tree(node.tree_id):
            self.probes.on_node(node, now)
            return
        if delivery.stream_sequence <= self.replayed_until_seq:
            # Unacked by the previous incarnation, already applied by the replay.
            self.replay_skipped += 1
            return
        if not sent_by_claimed_actor(self.bus.subjects, delivery.subject, node):
            self.drop_impostor(node, delivery.subject, now)
            return
        if self.config.shard.count > 1 and not self.own_shard(delivery.subject):
            self.drop_other_shards(node, delivery.subject, now)
            return
        outcome = self.core.on_node(node, now)
        if outcome != "accepted":
            log.debug("node_not_accepted", node_id=node.node_id, tree_id=node.tree_id, outcome=outcome)
            # Written before the ack, so a crash cannot lose the record of a late node.
            self.record_drops(now)

    def drop_impostor(self, node: TurnNode, subject: str, now: float) -> None:
        """Count and record a node whose ``actor_id`` is not the actor its subject names; it never enters a tree."""
        sender = self.bus.subjects.sender_of_node(subject)
        self.bus.count(f"rejected.{ACTOR_MISMATCH}")
        log.warning("node_actor_mismatch", node_id=node.node_id, claimed=node.actor_id, sender=sender, subject=subject)
        self.drops.write(
            {
                "reason": ACTOR_MISMATCH,
                "tree_id": node.tree_id,
                "node_ids": [node.node_id],
                "claimed_actor": node.actor_id,
                "sender": sender,
            },
            now,
        )
        self.nodes_dropped += 1

    def own_shard(self, subject: str) -> bool:
        parts = self.bus.subjects.node_subject_parts(subject)
        return parts is not None and parts[1] == self.config.shard.index

    def drop_other_shards(self, node: TurnNode, subject: str, now: float) -> None:
        """Record a node that came on another shard's subject; its own shard has its copy.
        The consumer's filter lets none through: this is the check that it does not."""
        self.bus.count(f"rejected.{WRONG_SHARD}")
        log.warning("node_of_another_shard", node_id=node.node_id, tree_id=node.tree_id, subject=subject)
        self.drops.write({"reason": WRONG_SHARD, "tree_id": node.tree_id, "node_ids": [node.node_id]}, now)
        self.nodes_dropped += 1

    def record_drops(self, now: float) -> None:
        """Append the core's dropped node ids, one line per (reason, tree), flushed at once."""
        grouped: dict[tuple[DropReason, str], list[str]] = {}
        for reason, tree_id, node_id in self.core.pop_dropped():
            grouped.setdefault((reason, tree_id), []).append(node_id)
        for (reason, tree_id), node_ids in grouped.items():
            self.drops.write({"reason": reason, "tree_id": tree_id, "node_ids": node_ids}, now)
            self.nodes_dropped += len(node_ids)

    def record_held(self, now: float) -> None:
        # Trees still in the outbox were never published: a replay closes their steps again.
        unpublished = [
            (m.tree_id, [n.node_id for n in m.nodes]) for _, m, _ in self.outbox if isinstance(m, CompletedTree)
        ]
        held = self.core.held_nodes() + unpublished
        writer = MetricsWriter(self.config.run.run_dir, held_metrics(self.config.shard))
        try:
            for tree_id, node_ids in held:
                writer.write({"incarnation": self.incarnation, "tree_id": tree_id, "node_ids": node_ids}, now)
            # An empty stop is recorded too, so a reader can tell "nothing held" from "no record".
            writer.write({"incarnation": self.incarnation, "stopped": True, "trees": len(held)}, now)
        finally:
            writer.close()
        log.info("allocator_held_nodes", trees=len(held), nodes=sum(len(ids) for _, ids in held))

    def queue_work(self, routed: list[RoutedWork]) -> None:
        subjects = self.bus.subjects
        for r in routed:
            subject = subjects.work_for_actor(r.target) if r.target else subjects.work_shared
            self.outbox.append((subject, r.item, r.item.work_id))
            if r.target:
                self.routed[r.item.work_id] = (r.target, r.item)

    def reroute_stranded(self) -> None:
        """Send unfinished work routed to actors that are gone to the shared queue."""
        if not self.registry_read:  # before the first read every actor would look gone
            return
        live = {a.actor_id for a in self.actors}
        moved: dict[str, int] = {}
        for work_id, (actor_id, item) in list(self.routed.items()):
            if not self.core.is_outstanding(item.tree_id, work_id):
                del self.routed[work_id]
            elif actor_id not in live:
                # A new message id: the stream would drop the item's own id as a duplicate.
                self.outbox.append((self.bus.subjects.work_shared, item, f"{work_id}.rerouted"))
                del self.routed[work_id]
                moved[actor_id] = moved.get(actor_id, 0) + 1
        if moved:
            self.rerouted += sum(moved.values())
            log.warning("work_rerouted_from_gone_actors", items=moved)

    def queue_trees(self, now: float) -> None:
        trees = self.core.pop_completed(now)
        # Before the trees go out: after a crash in between, the replay closes the step again.
        self.record_drops(now)
        for tree in trees:
            self.outbox.append((self.bus.subjects.trees, tree, tree.tree_id))
        if trees:
            steps = sorted({tree.allocator_step for tree in trees})
            self.steps_emitted += len(steps)
            self.trees_emitted += len(trees)
            log.info("trees_emitted", trees=len(trees), steps=steps, total=self.trees_emitted)

    async def flush_outbox(self) -> None:
        """Publish what the core decided; on a bus outage keep it and retry with the same ids.

        The core's state already assumes these messages went out, so they must never be
        dropped; the stream's duplicate window makes a retry of a half-acked batch safe.
        """
        if not self.outbox:
            return
        batch = self.outbox[:256]
        try:
            await self.bus.publish_batch(
                [(subject, msg) for subject, msg, _ in batch], msg_ids=[i for _, _, i in batch]
            )
        except Exception as err:  # noqa: BLE001 - any bus failure is retried on the next tick
            self.publish_failures += 1
            log.warning("publish_failed_will_retry", pending=len(self.outbox), error=repr(err))
            return
        del self.outbox[: len(batch)]
        self.work_published += sum(1 for _, msg, _ in batch if isinstance(msg, WorkItem))

    async def watch_policy(self) -> None:
        while not self.stop.is_set():
            try:
                async for announcement in self.bus.watch_weights(self.stop):
                    self.core.on_policy_version(announcement.policy_version)
                    if self.probes.due(announcement.policy_version):
                        self.queue_probe(announcement.policy_version)
                    if self.stop.is_set():
                        return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a lost watch is re-established
                log.warning("weights_watch_failed", error=repr(err))
                await sleep_or_stop(self.stop, 1.0)

    def queue_probe(self, version: int) -> None:
        items = self.probes.plan(version, time.time())
        subject = self.bus.subjects.work_shared
        self.outbox.extend((subject, item, item.work_id) for item in items)
        log.info("heldout_probe_issued", policy_version=version, work_items=len(items))

    async def refresh_actors(self) -> None:
        while not self.stop.is_set():
            try:
                beats = await self.bus.get_actors()
                self.actors = live_actor_loads(beats, time.time(), self.config.actor_timeout_s)
                self.registry_read = True
                self.reroute_stranded()
            except Exception as err:  # noqa: BLE001 - keep the last known registry and retry
                log.warning("actor_registry_read_failed", error=repr(err))
            await sleep_or_stop(self.stop, self.config.registry_interval_s)

    async def schedule_loop(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            started, started_cpu = time.perf_counter(), time.thread_time()
            routed = self.core.schedule(now, self.actors)
            self.schedule_latency.add(time.perf_counter() - started)
            self.schedule_cpu.add(time.thread_time() - started_cpu)
            self.queue_work(routed)
            self.queue_trees(now)
            while self.outbox and not self.stop.is_set():
                pending = len(self.outbox)
                await self.flush_outbox()
                if len(self.outbox) >= pending:  # failed: back off a little
                    break
            if self.config.max_steps and self.steps_emitted >= self.config.max_steps:
                log.info("max_steps_reached", steps=self.steps_emitted)
                self.stop.set()
            # A round planned or handed out over several calls goes on as soon as the loop
            # has served its other tasks: each call is short, the round need not wait ticks.
            await sleep_or_stop(self.stop, 0.0 if self.core.busy else self.config.schedule_interval_s)

    async def metrics_loop(self) -> None:
        while not self.stop.is_set():
            await sleep_or_stop(self.stop, self.config.metrics_interval_s)
            self.write_metrics()

    def write_metrics(self) -> None:
        now = time.time()
        record = {f"core.{k}": v for k, v in self.core.metrics().items()}
        record.update({f"bus.{k}": v for k, v in self.bus.counters.items()})
        record.update(
            step=self.core.next_step_index,
            policy_version=self.core.policy_version,
            live_actors=len(self.actors),
            trees_emitted=self.trees_emitted,
            work_published=self.work_published,
            publish_failures=self.publish_failures,
            outbox=len(self.outbox),
            nodes_dropped=self.nodes_dropped,
            work_rerouted=self.rerouted,
            replay_skipped=self.replay_skipped,
        )
        record.update(self.schedule_latency.summary("schedule_ms", scale=1000.0))
        record.update(self.schedule_cpu.summary("schedule_cpu_ms", scale=1000.0))
        record.update(self.node_age.summary("node_age_s"))
        self.metrics.write(record, now)
        for result in self.probes.pop_results():
            self.metrics.write(
                {
                    "heldout.policy_version": result.policy_version,
                    "heldout.greedy_success": result.greedy_success,
                    "heldout.sampled_success": result.sampled_success,
                    "heldout.tasks": result.tasks,
                    "heldout.seconds": result.seconds,
                },
                now,
            )
            log.info("heldout_success", **vars(result))


def shard_consumer_config(subjects: Subjects, shard: int, single: api.ConsumerConfig) -> api.ConsumerConfig:
    """Shard ``shard``'s durable on the nodes stream: the single allocator's (as the bus
    provisioned it: ack wait, redeliveries) under the shard's name and filter."""
    name = subjects.allocator_shard_consumer(shard)
    return dataclasses.replace(
        single, name=name, durable_name=name, filter_subject=subjects.nodes_for_shard(shard), filter_subjects=None
    )


async def nodes_consumer(bus: BusClient, shard: ShardConfig) -> PullConsumer[TurnNode]:
    """Bind to this shard's durable on the nodes stream; a shard k > 0 creates its own first
    (creating it again with the same config is a no-op, so a restart re-binds)."""
    s = bus.subjects
    if shard.index > 0:
        single = await bus.js.consumer_info(s.nodes_stream, s.allocator_consumer)
        config = shard_consumer_config(s, shard.index, single.config)
        await bus.js.add_consumer(s.nodes_stream, config=config)
    return await bus.pull_consumer(s.nodes_stream, s.allocator_shard_consumer(shard.index), TurnNode)


async def serve(config: AllocatorConfig) -> int:
    bus = await BusClient.connect("allocator", config.bus, config.run)
    service = AllocatorService(config, bus)
    stop_on_signals(service.stop, config.run.stop_timeout_s)
    nodes = await nodes_consumer(bus, config.shard)
    replay, service.routed = await rebuild_from_streams(service.core, bus, time.time())
    service.replayed_until_seq = replay.nodes_until_seq
    service.record_drops(time.time())
    log.info("allocator_rebuilt", **replay.__dict__)
    log.info(
        "allocator_started",
        strategy=config.core.strategy,
        env=config.tasks.env,
        pool=len(service.core.task_pool),
        shard=config.shard.index,
        shards=config.shard.count,
    )
    tasks = [
        asyncio.create_task(nodes.run(service.on_node, service.stop, batch=256, timeout=0.2), name="consume-nodes"),
        asyncio.create_task(service.watch_policy(), name="watch-policy"),
        asyncio.create_task(service.refresh_actors(), name="refresh-actors"),
        asyncio.create_task(service.schedule_loop(), name="schedule"),
        asyncio.create_task(service.metrics_loop(), name="metrics"),
    ]
    await service.stop.wait()
    stuck = await end_tasks(tasks)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(service.flush_outbox(), timeout=config.bus.request_timeout_s)
    service.write_metrics()
    service.record_drops(time.time())
    service.record_held(time.time())
    service.metrics.close()
    service.drops.close()
    await nodes.close()
    await bus.close()
    log.info("allocator_stopped", trees=service.trees_emitted, steps=service.steps_emitted)
    return EXIT_STOP_OVERRAN if stuck else 0


def run(config: AllocatorConfig) -> int:
    configure_logging(config.shard.role_name, config.run.run_dir, config.log.level, config.log.json_file)
    write_resolved_config(config, config.shard.role_name)
    return run_role(serve(config))
