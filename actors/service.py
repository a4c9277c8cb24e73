"""`tracerl actor`: pull work items, roll them out on the local vLLM engine, stream TurnNodes.

The shell around the episode loop:

- two pull loops (the shared work subject and this actor's own subject, where the allocator
  routes branches whose prefix is likely in this actor's KV cache) feed up to
  ``max_inflight_items`` concurrent work items;
- each item's nodes are published as its turns finish, each awaiting the stream's ack with
  the node id as the message id; the item is acked only after its last node is stored, so a
  crash leaves it for redelivery. Every item taken is a new sampling with node ids of its
  own (``actors.episode``): a redelivered item's nodes never collide with the first run's;
- a watcher on the policy-version key downloads, verifies and reloads new weights between
  turns; heartbeats register the actor and its load in the KV bucket;
- every ``metrics_interval_s`` and once at stop, a record of rates and counters (the bus's
  rejected messages by reason among them) goes to ``metrics/actor-<id>.jsonl``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from actors.config import ActorConfig
from actors.engine import PolicyEngine, route_engine_logs
from actors.episode import EpisodeContext, EpisodeError, new_sampling, run_work_item
from actors.metrics import Counters, Rates, interval_record, queue_wait_s, rates_between
from actors.weights import (
    WeightsError,
    fetch_verified,
    model_dir_signature,
    prune_versions,
    verify_blob,
    write_version_dir,
)
from environments.base import Environment
from protocol import Heartbeat, Subjects, WeightsAnnouncement, WorkItem
from tracerl.lifecycle import EXIT_STOP_OVERRAN, end_tasks, run_role, sleep_or_stop, stop_on_signals
from tracerl.logs import configure_logging, get_logger
from tracerl.metrics import role_metrics
from weightsync.broadcast import BroadcastReceiver, end_role

log = get_logger(__name__)

ROLE = "actor"
#: How long a stopping actor waits for its cancelled in-flight items before it goes on.
STOP_GRACE_S = 10.0


class ActorService:
    """One actor: owns the engine's work admission, the bus subscriptions and the weights watcher."""

    def __init__(
        self,
        config: ActorConfig,
        engine: PolicyEngine,
        bus: Any,
        actor_id: str,
        make_env: Callable[[str], Environment] | None = None,
    ) -> None:
        if make_env is None:
            from environments.registry import make_env as registry_make_env

            make_env = registry_make_env
        self.config = config
        self.engine = engine
        self.bus = bus
        self.actor_id = actor_id
        self.subjects = Subjects(config.run.run_id)
        self.make_env = make_env
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.started_at = time.time()
        self.slots = asyncio.Semaphore(config.max_inflight_items)
        self.inflight: set[asyncio.Task[None]] = set()
        self.latest_announced: int | None = None
        self.items_started = 0
        self.items_completed = 0
        self.items_rejected = 0
        self.nodes_published = 0
        self.queue_wait_s_total = 0.0
        # Versions loaded, and announced versions not loaded by reason (WeightsError reasons).
        self.weights_loaded = 0
        self.weights_failures: Counter[str] = Counter()
        self.reference_signature = model_dir_signature(config.model_dir)
        self.weights_root = Path(config.weights_dir or Path(config.run.run_dir) / "actors" / actor_id / "weights")
        self._version_changed = asyncio.Condition()
        # One version is fetched or loaded at a time, whichever way it came.
        self._loading = asyncio.Lock()
        self.broadcast = (
            BroadcastReceiver(bus, config.weights, config.run.run_id, actor_id)
            if config.weights.transport == "broadcast"
            else None
        )
        self._broadcast_loads: set[asyncio.Task[bool]] = set()
        self.metrics = role_metrics(config.run, config.log, f"{ROLE}-{actor_id}")
        self._metrics_base = self.counters()

    # Lifecycle ----------------------------------------------------------------------

    async def serve(self) -> int:
        """Serve until ``stop`` is set; unfinished items are handed back for redelivery."""
        await self.sync_weights_once()
        await self.heartbeat()
        shared = await self.bus.pull_consumer(self.subjects.work_stream, self.subjects.shared_work_consumer, WorkItem)
        own_name = await self.bus.ensure_actor_consumer(self.actor_id, await self._work_limits())
        own = await self.bus.pull_consumer(self.subjects.work_stream, own_name, WorkItem)
        log.info(
            "actor_serving",
            actor_id=self.actor_id,
            policy_version=self.engine.policy_version,
            capacity=self.config.max_inflight_items,
        )
        background = [
            # The own subject only carries routed branches: it takes one slot at a time so an idle
            # wait on it never holds capacity the shared queue could use.
            asyncio.create_task(self._pull_loop(own, max_batch=1), name="pull-own"),
            asyncio.create_task(self._pull_loop(shared, max_batch=16), name="pull-shared"),
            asyncio.create_task(self._watch_weights(), name="weights"),
            *([asyncio.create_task(self._receive_broadcasts(), name="weights-broadcast")] if self.broadcast else []),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
        ]
        await self.stop.wait()
        log.info("actor_stopping", actor_id=self.actor_id, inflight=len(self.inflight))
        if await end_tasks(background):
            self.exit_code = EXIT_STOP_OVERRAN
        for task in [*self.inflight, *self._broadcast_loads]:
            task.cancel()
        if self.inflight:
            # A generation cancelled in its first moments has been seen to never return from
            # vLLM's abort; its item is unacked, so the bus redelivers it to another actor.
            _, stuck = await asyncio.wait(list(self.inflight), timeout=STOP_GRACE_S)
            if stuck:
                log.warning("inflight_abandoned", actor_id=self.actor_id, items=len(stuck))
        for consumer in (own, shared):
            await consumer.close()
        await self.deregister()
        # Totals at the stop, so a short run (or the tail of a long one) is not missing from the file.
        self.write_metrics(rates_between(self._metrics_base, self.counters()), final=True)
        self.metrics.close()
        return self.exit_code

    async def _work_limits(self):
        """The shared durable's ack_wait and max_deliver, so this actor's own durable matches it."""
        from bus.config import StreamLimits

        info = await self.bus.js.consumer_info(self.subjects.work_stream, self.subjects.shared_work_consumer)
        return StreamLimits(ack_wait_s=float(info.config.ack_wait), max_deliver=int(info.config.max_deliver))

    # Work ---------------------------------------------------------------------------

    async def _pull_loop(self, consumer: Any, max_batch: int) -> None:
        while not self.stop.is_set():
            await self.slots.acquire()
            taken = 1
            while taken < max_batch and not self.slots.locked():
                await self.slots.acquire()
                taken += 1
            try:
                msgs = await consumer.sub.fetch(taken, timeout=self.config.pull_timeout_s)
            except asyncio.CancelledError:
                for _ in range(taken):
                    self.slots.release()
                raise
            except Exception as err:  # noqa: BLE001 - timeouts and connection trouble: retry after a pause
                msgs = []
                if not _is_timeout(err):
                    log.warning("fetch_failed", consumer=consumer.durable, error=repr(err))
                    await sleep_or_stop(self.stop, self.config.pull_timeout_s)
            for _ in range(taken - len(msgs)):
                self.slots.release()
            for msg in msgs:
                task = asyncio.create_task(self._handle_message(consumer, msg))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)

    async def _handle_message(self, consumer: Any, msg: Any) -> None:
        try:
            # Decoding, dead-lettering of invalid messages and the ack after success are the bus's.
            await consumer._handle(msg, self.handle_item)
        finally:
            self.slots.release()

    async def handle_item(self, item: WorkItem, delivery: Any) -> None:
        """Run one work item to completion; raising leaves it for redelivery, returning acks it."""
        self.items_started += 1
        self.queue_wait_s_total += queue_wait_s(item.issued_at, time.time())
        ctx = EpisodeContext(self.actor_id, self.engine.settings.max_model_len, new_sampling())
        if delivery.num_delivered > 1:
            # Another run took it and never acked it (crashed, stopped, or too slow): this run
            # is a new sampling, whose nodes the allocator keeps apart from that run's.
            log.info(
                "work_item_redelivered", work_id=item.work_id, delivery=delivery.num_delivered, sampling=ctx.sampling
            )
        try:
            self.make_env(item.task.env)
        except Exception as err:  # noqa: BLE001 - the registry signals unknown names with EnvironmentError_
            await self._reject(item, delivery, "unknown_env", f"{type(err).__name__}: {err}")
            return
        progress = asyncio.create_task(self._keep_alive(delivery))
        try:
            await self._wait_for_version(item.min_policy_version)
            try:
                async for node in run_work_item(self.engine, lambda: self.make_env(item.task.env), item, ctx):
                    await self.bus.publish(
                        self.subjects.nodes_from(self.actor_id, item.shard), node, msg_id=node.node_id
                    )
                    self.nodes_published += 1
                    if self.nodes_published == 1:  # the end of joining a run (`tracerl bench join`)
                        log.info("first_node_published", node_id=node.node_id, policy_version=node.policy_version)
            except EpisodeError as err:
                await self._reject(item, delivery, err.reason, err.detail)
                return
        except asyncio.CancelledError:
            # Shutting down: hand the item straight back instead of waiting out ack_wait.
            with suppress(Exception):
                await asyncio.wait_for(delivery.msg.nak(), timeout=1.0)
            raise
        except Exception:
            if self.engine.is_dead:
                self._fail("engine_dead")
            raise
        finally:
            progress.cancel()
        self.items_completed += 1

    async def _reject(self, item: WorkItem, delivery: Any, reason: str, detail: str) -> None:
        self.items_rejected += 1
        log.warning("work_item_rejected", work_id=item.work_id, reason=reason, detail=detail[:200])
        await self.bus.dead_letter(delivery.msg, reason=reason, detail=detail, consumer=self.actor_id)

    async def _keep_alive(self, delivery: Any) -> None:
        while not await sleep_or_stop(self.stop, self.config.progress_interval_s):
            with suppress(Exception):
                await delivery.in_progress()

    async def _wait_for_version(self, minimum: int) -> None:
        """Raises TimeoutError (so the item is nak'ed for another actor) if the version never arrives."""
        async with self._version_changed:
            await asyncio.wait_for(
                self._version_changed.wait_for(lambda: self.engine.policy_version >= minimum),
                timeout=self.config.version_wait_s,
            )

    def _fail(self, reason: str) -> None:
        log.error("actor_failing", reason=reason)
        self.exit_code = 1
        self.stop.set()

    # Weights ------------------------------------------------------------------------

    async def sync_weights_once(self) -> None:
        announcement = await self.bus.get_weights_announcement()
        if announcement is not None:
            await self.apply_announcement(announcement)

    async def _watch_weights(self) -> None:
        while not self.stop.is_set():
            try:
                async for announcement in self.bus.watch_weights(self.stop):
                    await self.apply_announcement(announcement)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a lost watch is re-established; the served version stays
                log.warning("weights_watch_failed", error=repr(err))
                await sleep_or_stop(self.stop, 1.0)

    async def _receive_broadcasts(self) -> None:
        """Versions broadcast by the learner (``weights.transport: broadcast``); the KV watch
        above still fetches from the object store whatever the broadcast did not bring."""
        assert self.broadcast is not None

        async def deliver(announcement: WeightsAnnouncement, blob: bytearray) -> None:
            # Loaded beside the receiver, which must be back in the group for the next version.
            task = asyncio.create_task(self.apply_broadcast(announcement, blob))
            self._broadcast_loads.add(task)
            task.add_done_callback(self._broadcast_loads.discard)

        await self.broadcast.run(self.stop, deliver)

    async def apply_announcement(self, announcement: WeightsAnnouncement) -> bool:
        """Fetch, verify and load a newer version from the object store; any failure keeps the current one."""

        async def fetch() -> bytes:
            return await fetch_verified(
                self.bus.get_object, announcement, self.reference_signature, self.config.weights_fetch_timeout_s
            )

        return await self._apply(announcement, fetch)

    async def apply_broadcast(self, announcement: WeightsAnnouncement, blob: bytearray) -> bool:
        """Verify and load a broadcast version, checked as an object-store blob is."""

        async def verified() -> bytearray:
            verify_blob(blob, announcement, self.reference_signature)
            return blob

        return await self._apply(announcement, verified)

    async def _apply(
        self, announcement: WeightsAnnouncement, obtain: Callable[[], Awaitable[bytes | bytearray]]
    ) -> bool:
        if announcement.run_id != self.config.run.run_id:
            return False
        self.latest_announced = max(self.latest_announced or 0, announcement.policy_version)
        async with self._loading:
            if announcement.policy_version <= self.engine.policy_version:
                return False
            try:
                blob = await obtain()
                directory = await asyncio.to_thread(
                    write_version_dir, blob, self.config.model_dir, self.weights_root, announcement.policy_version
                )
                await self.engine.reload_weights(directory, announcement.policy_version)
            except WeightsError as err:
                self.weights_failures[err.reason] += 1
                log.error(
                    "weights_rejected",
                    policy_version=announcement.policy_version,
                    reason=err.reason,
                    detail=err.detail,
                    serving=self.engine.policy_version,
                )
                return False
            except Exception as err:  # noqa: BLE001 - I/O or engine failure: the engine has put its last good weights back
                self.weights_failures["load_failed"] += 1
                log.error(
                    "weights_update_failed",
                    policy_version=announcement.policy_version,
                    error=repr(err),
                    serving=self.engine.policy_version,
                )
                return False
            self.weights_loaded += 1
            prune_versions(self.weights_root, keep={announcement.policy_version})
        async with self._version_changed:
            self._version_changed.notify_all()
        return True

    # Registry and metrics -------------------------------------------------------------

    def heartbeat_message(self) -> Heartbeat:
        return Heartbeat(
            run_id=self.config.run.run_id,
            actor_id=self.actor_id,
            policy_version=self.engine.policy_version,
            inflight=len(self.inflight),
            capacity=self.config.max_inflight_items,
            tokens_generated=self.engine.tokens_generated,
            turns_generated=self.engine.turns_generated,
            started_at=self.started_at,
            sent_at=time.time(),
        )

    async def heartbeat(self) -> None:
        await self.bus.put_actor(self.heartbeat_message())

    async def _heartbeat_loop(self) -> None:
        while not await sleep_or_stop(self.stop, self.config.heartbeat_interval_s):
            try:
                await self.heartbeat()
            except Exception as err:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("heartbeat_failed", error=repr(err))

    async def deregister(self) -> None:
        try:
            kv = await self.bus.js.key_value(self.subjects.state_bucket)
            await kv.delete(Subjects.actor_key(self.actor_id))
            if self.broadcast is not None:
                await self.bus.delete_broadcast_join(self.actor_id)
        except Exception as err:  # noqa: BLE001 - the registry entry then ages out by its heartbeat time
            log.warning("deregister_failed", error=repr(err))

    def counters(self) -> Counters:
        return Counters(
            at=time.monotonic(),
            tokens_generated=self.engine.tokens_generated,
            turns_generated=self.engine.turns_generated,
            prompt_tokens=self.engine.prompt_tokens,
            cached_tokens=self.engine.cached_tokens,
            items_started=self.items_started,
            queue_wait_s_total=self.queue_wait_s_total,
        )

    async def _metrics_loop(self) -> None:
        while not await sleep_or_stop(self.stop, self.config.metrics_interval_s):
            after = self.counters()
            rates = rates_between(self._metrics_base, after)
            self._metrics_base = after
            self.write_metrics(rates)

    def write_metrics(self, rates: Rates, final: bool = False) -> None:
        record = interval_record(
            rates,
            latest_announced=self.latest_announced,
            policy_version=self.engine.policy_version,
            inflight_items=len(self.inflight),
            inflight_turns=self.engine.inflight_turns,
            items_completed=self.items_completed,
            items_rejected=self.items_rejected,
            nodes_published=self.nodes_published,
            weights_loaded=self.weights_loaded,
            weights_failures=self.weights_failures,
            bus_counters=self.bus.counters,
        )
        log.info("actor_metrics", **record)
        broadcast = {f"weights_broadcast.{k}": v for k, v in self.broadcast.counts.items()} if self.broadcast else {}
        self.metrics.write({**record, **broadcast, "actor_id": self.actor_id, **({"final": True} if final else {})})


def _is_timeout(err: Exception) -> bool:
    import nats.errors

    return isinstance(err, (nats.errors.TimeoutError, asyncio.TimeoutError))


async def serve(config: ActorConfig, actor_id: str) -> int:
    from bus.client import BusClient

    engine = await PolicyEngine.start(config.model_dir, config.engine)
    try:
        bus = await BusClient.connect(ROLE, config.bus, config.run, actor_id=actor_id)
        try:
            service = ActorService(config, engine, bus, actor_id)
            stop_on_signals(service.stop, config.run.stop_timeout_s)
            return await service.serve()
        finally:
            await bus.close()
    finally:
        engine.shutdown()


def identity(config: ActorConfig) -> str:
    """This actor's id: the configured one, else the one its own credentials file is for, else a fresh one.

    An actor given a credential of its own (``tracerl bus add-actor``) may publish only as
    that id, so a file named in ``bus.credentials`` decides the id when none is configured.
    """
    if config.actor_id or not config.bus.credentials:
        return config.resolved_actor_id()
    from bus.server import RoleCredentials

    return RoleCredentials.read(Path(config.bus.credentials)).actor_id or config.resolved_actor_id()


def run(config: ActorConfig) -> int:
    """Entry point of `tracerl actor`; returns the process exit code."""
    actor_id = identity(config)
    configure_logging(f"{ROLE}-{actor_id}", config.run.run_dir, config.log.level, config.log.json_file)
    route_engine_logs(Path(config.run.run_dir) / "logs" / f"{ROLE}-{actor_id}.engine.log", config.log.level)
    log.info("actor_starting", actor_id=actor_id, model_dir=config.model_dir, run_id=config.run.run_id)
    return end_role(run_role(serve(config, actor_id)), config.weights)
