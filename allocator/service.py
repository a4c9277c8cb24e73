"""`tracerl allocator`: the NATS shell around ``AllocatorCore``.

It moves data only: TurnNodes from the nodes stream into the core, the learner's policy
version from the KV bucket into the core, the core's routed WorkItems onto the work
subjects, and finished trees onto the trees stream. Held-out probes ride the same actors
and are tallied by ``allocator.heldout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from allocator.config import AllocatorConfig
from allocator.core import ActorLoad, AllocatorCore, RoutedWork
from allocator.heldout import HeldoutProbes, is_probe_tree
from bus.client import BusClient, Delivery
from environments.registry import make_env, make_tasks
from protocol import Heartbeat, TaskSpec, TurnNode, WorkItem
from tracerl.config import write_resolved_config
from tracerl.logs import configure_logging, get_logger
from tracerl.metrics import MetricsWriter

log = get_logger(__name__)


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


class AllocatorService:
    def __init__(self, config: AllocatorConfig, bus: BusClient) -> None:
        self.config = config
        self.bus = bus
        pool = make_tasks(config.tasks.env, "train", config.tasks.train_tasks, config.tasks.seed)
        heldout = make_tasks(config.tasks.env, "heldout", config.heldout.tasks, config.tasks.seed)
        self.core = AllocatorCore(config.core, pool, config.run.seed, run_id=config.run.run_id, prompt_text=PromptTexts())
        self.probes = HeldoutProbes(config.heldout, heldout, config.run.run_id)
        self.metrics = MetricsWriter(config.run.run_dir, "allocator")
        self.actors: list[ActorLoad] = []
        self.steps_emitted = 0
        self.trees_emitted = 0
        self.work_published = 0
        self.publish_failures = 0
        # (subject, message, msg id) decided by the core or the probes, not yet acked by the bus.
        self.outbox: list[tuple[str, Any, str]] = []
        self.stop = asyncio.Event()

    async def on_node(self, node: TurnNode, delivery: Delivery) -> None:
        now = time.time()
        if is_probe_tree(node.tree_id):
            self.probes.on_node(node, now)
            return
        outcome = self.core.on_node(node, now)
        if outcome != "accepted":
            log.debug("node_not_accepted", node_id=node.node_id, tree_id=node.tree_id, outcome=outcome)

    def queue_work(self, routed: list[RoutedWork]) -> None:
        subjects = self.bus.subjects
        for r in routed:
            subject = subjects.work_for_actor(r.target) if r.target else subjects.work_shared
            self.outbox.append((subject, r.item, r.item.work_id))

    def queue_trees(self, now: float) -> None:
        trees = self.core.pop_completed(now)
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
            await self.bus.publish_batch([(subject, msg) for subject, msg, _ in batch], msg_ids=[i for _, _, i in batch])
        except Exception as err:  # noqa: BLE001 - any bus failure is retried on the next tick
            self.publish_failures += 1
            log.warning("publish_failed_will_retry", pending=len(self.outbox), error=repr(err))
            return
        del self.outbox[: len(batch)]
        self.work_published += sum(1 for _, msg, _ in batch if isinstance(msg, WorkItem))

    async def watch_policy(self) -> None:
        async for announcement in self.bus.watch_weights():
            self.core.on_policy_version(announcement.policy_version)
            if self.probes.due(announcement.policy_version):
                self.queue_probe(announcement.policy_version)
            if self.stop.is_set():
                return

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
            except Exception as err:  # noqa: BLE001 - keep the last known registry and retry
                log.warning("actor_registry_read_failed", error=repr(err))
            await _sleep_or_stop(self.stop, self.config.registry_interval_s)

    async def schedule_loop(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            self.queue_work(self.core.schedule(now, self.actors))
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
            await _sleep_or_stop(self.stop, 0.0 if self.core.busy else self.config.schedule_interval_s)

    async def metrics_loop(self) -> None:
        while not self.stop.is_set():
            await _sleep_or_stop(self.stop, self.config.metrics_interval_s)
            self.write_metrics()

    def write_metrics(self) -> None:
        now = time.time()
        record = {f"core.{k}": v for k, v in self.core.metrics().items()}
        record.update({f"bus.{k}": v for k, v in self.bus.counters.items()})
        record.update(
            policy_version=self.core.policy_version,
            live_actors=len(self.actors),
            trees_emitted=self.trees_emitted,
            work_published=self.work_published,
            publish_failures=self.publish_failures,
            outbox=len(self.outbox),
        )
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
            log.info("heldout_success", **{k: v for k, v in result.__dict__.items()})


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def serve(config: AllocatorConfig) -> None:
    bus = await BusClient.connect("allocator", config.bus, config.run)
    service = AllocatorService(config, bus)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stop.set)
    nodes = await bus.pull_consumer(bus.subjects.nodes_stream, bus.subjects.allocator_consumer, TurnNode)
    log.info("allocator_started", strategy=config.core.strategy, env=config.tasks.env, pool=len(service.core.task_pool))
    tasks = [
        asyncio.create_task(nodes.run(service.on_node, service.stop, batch=256, timeout=0.2)),
        asyncio.create_task(service.watch_policy()),
        asyncio.create_task(service.refresh_actors()),
        asyncio.create_task(service.schedule_loop()),
        asyncio.create_task(service.metrics_loop()),
    ]
    await service.stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(service.flush_outbox(), timeout=config.bus.request_timeout_s)
    service.write_metrics()
    service.metrics.close()
    await nodes.close()
    await bus.close()
    log.info("allocator_stopped", trees=service.trees_emitted, steps=service.steps_emitted)


def run(config: AllocatorConfig) -> int:
    configure_logging("allocator", config.run.run_dir, config.log.level, config.log.json_file)
    write_resolved_config(config, "allocator")
    asyncio.run(serve(config))
    return 0
