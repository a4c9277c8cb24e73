"""`tracerl learner`: the NATS shell around ``Trainer``.

Rank 0 pulls CompletedTrees, and for every whole allocator step (see ``learner.batching``)
it takes one optimiser step (all ranks join through ``Trainer.share_batch``), publishes the new weights
to the object store and announces the version in the KV bucket. Checkpoints are written
every ``training.checkpoint_every_steps`` steps, and a restarted learner resumes from the
newest one; it announces that version only if the run does not have it yet
(``learner.versions``).

A tree's message is acked only once a checkpoint holds the step that trained it, or once
the tree is turned away for a counted reason (``learner.ledger``); until then the learner
holds it and marks it in progress every third of the durable's ack_wait. A learner killed
with trees buffered, or trained but not checkpointed, leaves them to its successor, which
trains each once: the checkpoint lists the trees it holds. Every tree made durable is
recorded by id in ``metrics/learner_trees.jsonl``, so a run can be reconciled tree by tree.

Each version's weights are their own object; after each publication the versions no actor
can use any more are deleted beside training (``learner.weights_retention``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from statistics import fmean
from typing import TypeVar

import nats.errors

from bus.client import BusClient, Delivery
from environments.base import solved
from learner.batching import StepBatcher
from learner.config import LearnerConfig
from learner.ledger import AckLedger, Arrival, keep_alive_interval_s
from learner.trainer import Trainer, checkpoint_root, latest_checkpoint
from learner.versions import WEIGHTS_METRICS, Publication, read_publications, resume_plan
from learner.weights_retention import prune_weights, weights_announcement
from protocol import CompletedTree, WeightsAnnouncement
from tracerl.config import write_resolved_config
from tracerl.lifecycle import EXIT_STOP_OVERRAN, end_tasks, run_role, sleep_or_stop, stop_on_signals
from tracerl.logs import configure_logging, get_logger
from tracerl.metrics import MetricsWriter, role_metrics
from weightsync.broadcast import end_role
from weightsync.transport import WeightsPublisher, make_publisher

log = get_logger(__name__)

T = TypeVar("T")

#: ``metrics/learner_trees.jsonl``: the ids of the trees made durable, trained or turned away.
TREES_METRICS = "learner_trees"
_SETTLE_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


def tree_batch_stats(trees: list[CompletedTree]) -> dict[str, float]:
    """Reward and effective ratio of a training batch, from its leaves."""
    leaf_rewards = []
    mixed = 0
    for tree in trees:
        rewards = [float(n.reward or 0.0) for n in tree.nodes if n.done]
        leaf_rewards.extend(rewards)
        if rewards and not solved(min(rewards)) and solved(max(rewards)):
            mixed += 1
    return {
        "batch.reward_mean": fmean(leaf_rewards) if leaf_rewards else 0.0,
        "batch.leaves": float(len(leaf_rewards)),
        "batch.turns": float(sum(len(t.nodes) for t in trees)),
        "batch.effective_ratio": mixed / len(trees) if trees else 0.0,
        "batch.generated_tokens": float(sum(len(n.action_token_ids) for t in trees for n in t.nodes)),
    }


class LearnerService:
    def __init__(
        self, config: LearnerConfig, trainer: Trainer, bus: BusClient, publisher: WeightsPublisher | None = None
    ) -> None:
        self.config = config
        self.trainer = trainer
        self.bus = bus
        # How versions reach the actors (``weights.transport``).
        self.publisher = publisher or make_publisher(
            bus, config.weights, config.run.run_id, config.training.weights_actor_timeout_s
        )
        self.batcher = StepBatcher(config.training.trees_per_step, config.training.step_wait_s)
        self.metrics = role_metrics(config.run, config.log, "learner", step_key="step")
        # Every announcement in order, across restarts: versions must go strictly up.
        self.announcements = MetricsWriter(config.run.run_dir, WEIGHTS_METRICS)
        self.tree_records = MetricsWriter(config.run.run_dir, TREES_METRICS)
        self.stop = asyncio.Event()
        # Set once the learner holds no message any more (after its stop's acks and naks).
        self.released = asyncio.Event()
        self.trees_received = 0
        self.trees_trained = 0
        self.tree_counts: Counter[str] = Counter()
        self.ledger = AckLedger(trainer.trained_trees)
        # The newest delivery of every tree the ledger holds.
        self.deliveries: dict[str, Delivery] = {}
        self.started_at = time.time()
        self.pruning: asyncio.Task | None = None
        self.weights_deleted = 0
        self.weights_prune_failed = 0

    async def on_tree(self, tree: CompletedTree, delivery: Delivery) -> None:
        self.trees_received += 1
        arrival = self.ledger.arrive(tree.tree_id)
        if arrival is Arrival.TRAINED:
            # Returning acks it: the checkpoint this learner resumed from (or took) trained it.
            self.tree_counts["already_trained"] += 1
            self.tree_records.write({"event": "already_trained", "tree_ids": [tree.tree_id]})
            log.info("tree_already_trained", tree_id=tree.tree_id, delivery=delivery.num_delivered)
            return
        delivery.hold()
        self.deliveries[tree.tree_id] = delivery
        if arrival is Arrival.HELD:
            self.tree_counts["redelivered_held"] += 1
            return
        self.batcher.add(tree, time.time())

    async def _settle(self, tree_ids: Iterable[str], *, hand_back: bool = False) -> None:
        """Ack (or nak: hand back for redelivery now) the held messages of ``tree_ids``."""
        for tree_id in tree_ids:
            delivery = self.deliveries.pop(tree_id, None)
            if delivery is None:
                continue
            try:
                await (delivery.nak() if hand_back else delivery.ack())
            except _SETTLE_ERRORS as err:
                # Redelivered after ack_wait: the checkpoint's tree ids turn the copy away.
                self.tree_counts["settle_failed"] += 1
                log.warning("tree_settle_failed", tree_id=tree_id, hand_back=hand_back, error=repr(err))
            else:
                self.tree_counts["handed_back" if hand_back else "acked"] += 1

    async def trees_checkpointed(self) -> None:
        """A checkpoint now holds every step taken: record and ack their trees."""
        tree_ids = self.ledger.checkpointed()
        if tree_ids:
            self.tree_records.write(
                {
                    "event": "trained",
                    "policy_version": self.trainer.policy_version,
                    "steps_done": self.trainer.steps_done,
                    "tree_ids": tree_ids,
                }
            )
            await self._settle(tree_ids)

    async def hand_back_unstarted(self) -> None:
        """At a stop: the trees no step used go back to the stream for the next learner."""
        tree_ids = self.ledger.unstarted()
        if tree_ids:
            log.info("trees_handed_back", trees=len(tree_ids))
        await self._settle(tree_ids, hand_back=True)

    async def keep_alive(self, interval_s: float) -> None:
        """Mark every held message in progress until the learner holds none."""
        while not await sleep_or_stop(self.released, interval_s):
            for tree_id, delivery in list(self.deliveries.items()):
                try:
                    await delivery.in_progress()
                except _SETTLE_ERRORS as err:  # a bus outage: the next round tries again
                    self.tree_counts["keep_alive_failed"] += 1
                    log.debug("tree_keep_alive_failed", tree_id=tree_id, error=repr(err))

    def announcement_for(self, blob: bytes) -> WeightsAnnouncement:
        return weights_announcement(self.config.run.run_id, self.trainer.policy_version, blob, time.time())

    async def _until_done(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """Retry ``action`` with backoff until it succeeds or the learner stops."""
        delay = 0.5
        while True:  # a bus failover takes seconds; the actors must not miss a version
            try:
                return await action()
            except Exception as err:  # retried until it lands or we stop
                if self.stop.is_set():
                    raise
                log.warning(f"{what}_failed_will_retry", policy_version=self.trainer.policy_version, error=repr(err))
                await sleep_or_stop(self.stop, delay)
                delay = min(delay * 2, 10.0)

    async def announce(self, blob: bytes, announcement: WeightsAnnouncement, *, record: bool) -> None:
        """Publish a version through the transport and, with ``record``, log it. Where actors may
        hold a version before the KV announces it (a broadcast), it is logged first: a restarted
        learner must not reuse a number an actor has served (``resume_plan``)."""
        logged_first = record and self.publisher.reaches_actors_before_announcement
        if logged_first:
            self.record(announcement)
        await self._until_done("weights_publish", lambda: self.publisher.publish(blob, announcement))
        if record and not logged_first:
            self.record(announcement)
        log.info(
            "weights_published",
            policy_version=announcement.policy_version,
            bytes=len(blob),
            object=announcement.object_name,
        )

    def record(self, announcement: WeightsAnnouncement) -> None:
        self.announcements.write(
            {
                "policy_version": announcement.policy_version,
                "sha256": announcement.sha256,
                "steps_done": self.trainer.steps_done,
            }
        )

    async def publish_weights(self) -> WeightsAnnouncement:
        blob = await asyncio.to_thread(self.trainer.export_weights)
        announcement = self.announcement_for(blob)
        await self.announce(blob, announcement, record=True)
        self.start_pruning(announcement.policy_version)
        return announcement

    def start_pruning(self, current_version: int) -> None:
        """Delete the weights no actor can use any more, beside training (one pass at a time;
        a version a pass skips is caught by the next)."""
        if self.pruning is None or self.pruning.done():
            self.pruning = asyncio.create_task(self.prune_weights(current_version), name="prune-weights")

    async def prune_weights(self, current_version: int) -> None:
        training = self.config.training
        try:
            pruned = await prune_weights(
                self.bus, current_version, training.staleness_eta, training.weights_actor_timeout_s, time.time()
            )
        except Exception as err:  # noqa: BLE001 - pruning is never fatal: the store only grows until the next pass
            self.weights_prune_failed += 1
            log.warning("weights_prune_failed", policy_version=current_version, error=repr(err))
            return
        self.weights_deleted += len(pruned.deleted)
        if pruned.deleted:
            log.info(
                "weights_pruned",
                policy_version=current_version,
                deleted=list(pruned.deleted),
                kept=list(pruned.kept),
                live_versions=list(pruned.live_versions),
            )

    async def announce_resumed(self) -> None:
        """Announce the version the learner starts from, unless the run already has it; a
        checkpoint behind the run goes on under the next unused version (``resume_plan``)."""
        blob = await asyncio.to_thread(self.trainer.export_weights)
        checkpointed = self.announcement_for(blob)
        current = await self._until_done("weights_read", self.bus.get_weights_announcement)
        announced = None if current is None else Publication(current.policy_version, current.sha256)
        recorded = read_publications(self.config.run.run_dir)
        plan = resume_plan(
            Publication(checkpointed.policy_version, checkpointed.sha256), announced, recorded[-1] if recorded else None
        )
        announced_version = None if announced is None else announced.policy_version
        log.info(
            "weights_resume_plan",
            policy_version=plan.policy_version,
            announce=plan.announce,
            record=plan.record,
            announced=announced_version,
        )
        if plan.policy_version != checkpointed.policy_version:
            log.warning(
                "weights_rewound",
                checkpoint_version=checkpointed.policy_version,
                announced=announced_version,
                resumes_as=plan.policy_version,
            )
            self.trainer.policy_version = plan.policy_version
        announcement = self.announcement_for(blob)
        if plan.announce:
            await self.announce(blob, announcement, record=plan.record)
        elif plan.record:
            self.record(announcement)

    async def train_ready_batches(self) -> None:
        while not self.stop.is_set():
            if self.config.training.max_steps and self.trainer.steps_done >= self.config.training.max_steps:
                # Also after a restart from the checkpoint of the last step: no step past the limit.
                log.info("max_steps_reached", steps=self.trainer.steps_done)
                self.stop.set()
                return
            batch = self.batcher.next_batch(time.time())
            if batch is None:
                return
            started = time.time()
            trees = self.trainer.share_batch(batch)
            metrics = await asyncio.to_thread(self.trainer.train_step, trees)
            tree_ids = [tree.tree_id for tree in batch]
            if metrics.get("skipped"):
                # No weight changed: nothing to wait for, and nothing to train again.
                self.tree_counts["step_skipped"] += len(tree_ids)
                self.tree_records.write(
                    {"event": "step_skipped", "reason": metrics.get("skip_reason"), "tree_ids": tree_ids}
                )
                await self._settle(self.ledger.step_skipped(tree_ids))
            else:
                self.ledger.step_taken(tree_ids)
            self.trees_trained += len(batch)
            seconds = time.time() - started
            record = {f"train.{k}": v for k, v in metrics.items() if isinstance(v, (int, float, bool))}
            record.update(tree_batch_stats(batch))
            record.update(
                policy_version=self.trainer.policy_version,
                step=self.trainer.steps_done,
                step_seconds=seconds,
                trees_received=self.trees_received,
                trees_trained=self.trees_trained,
                batch_versions_min=min(n.policy_version for t in batch for n in t.nodes),
            )
            record.update(self.bus_counters())
            self.metrics.write(record)
            log.info(
                "train_step",
                step=self.trainer.steps_done,
                version=self.trainer.policy_version,
                reward=round(record["batch.reward_mean"], 3),
                effective_ratio=round(record["batch.effective_ratio"], 3),
                seconds=round(seconds, 2),
            )
            # Checkpoint first: a version announced and then lost in a crash would be announced
            # again, with other weights, by the restarted learner (versions must go strictly up).
            if await asyncio.to_thread(self.trainer.save_rolling_checkpoint) is not None:
                await self.trees_checkpointed()
            if metrics.get("skipped"):
                # No weight changed: the run has this version already, and announcing it again
                # would repeat it (versions must go strictly up).
                continue
            await self.publish_weights()

    def bus_counters(self) -> dict[str, int]:
        """The bus client's counts (``bus.rejected.<reason>``: trees refused unread, ...) and the
        learner's own per tree (``trees.acked``, ``trees.already_trained``, ...)."""
        counts = {f"bus.{name}": count for name, count in sorted(self.bus.counters.items())}
        counts.update({f"trees.{name}": count for name, count in sorted(self.tree_counts.items())})
        counts["trees.held"] = len(self.deliveries)
        counts["weights.deleted"] = self.weights_deleted
        counts["weights.prune_failed"] = self.weights_prune_failed
        sender = getattr(self.publisher, "sender", None)
        counts.update({f"weights.broadcast.{k}": v for k, v in sorted(getattr(sender, "counts", {}).items())})
        return counts

    def write_final_metrics(self) -> None:
        # Trees refused after the last step would otherwise be in no record.
        self.metrics.write(
            {
                "final": True,
                "trees_received": self.trees_received,
                "trees_trained": self.trees_trained,
                "policy_version": self.trainer.policy_version,
                **self.bus_counters(),
            }
        )

    async def train_loop(self) -> None:
        while not self.stop.is_set():
            await self.train_ready_batches()
            await sleep_or_stop(self.stop, 0.05)


def save_final_checkpoint(trainer: Trainer) -> None:
    """On shutdown, unless the rolling checkpoint already holds this version (all ranks call it)."""
    target = checkpoint_root(trainer.config) / f"v{trainer.policy_version:08d}"
    if target != latest_checkpoint(checkpoint_root(trainer.config)):
        trainer.save_checkpoint(target)


def build_trainer(config: LearnerConfig) -> Trainer:
    trainer = Trainer(config)
    checkpoint = latest_checkpoint(checkpoint_root(config))
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        log.info("resumed", checkpoint=str(checkpoint), policy_version=trainer.policy_version)
    return trainer


async def serve(config: LearnerConfig, trainer: Trainer) -> int:
    bus = await BusClient.connect("learner", config.bus, config.run)
    service = LearnerService(config, trainer, bus)
    stop_on_signals(service.stop, config.run.stop_timeout_s)
    await service.publisher.start()
    # Announce the starting point so actors and the allocator agree on the version.
    await service.announce_resumed()
    trees = await bus.pull_consumer(bus.subjects.trees_stream, bus.subjects.learner_consumer, CompletedTree)
    limits = await trees.limits()
    if limits.max_ack_pending is not None and limits.max_ack_pending > 0:
        # Provisioned by an older bus: held trees beyond the cap stop the deliveries.
        log.warning("trees_consumer_capped", max_ack_pending=limits.max_ack_pending)
    log.info(
        "learner_started",
        policy_version=trainer.policy_version,
        world_size=trainer.world_size,
        ack_wait_s=limits.ack_wait,
        max_deliver=limits.max_deliver,
        trained_trees=len(trainer.trained_trees),
    )
    if limits.ack_wait is None:
        raise RuntimeError("the trees consumer reports no ack_wait")
    keep_alive = asyncio.create_task(service.keep_alive(keep_alive_interval_s(limits.ack_wait)), name="keep-alive")
    consume = asyncio.create_task(trees.run(service.on_tree, service.stop, batch=32, timeout=0.5), name="consume-trees")
    train = asyncio.create_task(service.train_loop(), name="train")
    await service.stop.wait()
    stuck = await end_tasks([consume])
    # The train loop is not cancelled: it ends after the step it is in. Its update and its
    # checkpoint run in a thread that a cancel would not stop, and that half-written
    # checkpoint would collide with the final one below. The role's stop bound covers a
    # step that never ends.
    await asyncio.wait([train])
    if trainer.world_size > 1:
        trainer.share_batch([])  # tells the other ranks to stop
    if trainer.steps_done:
        await asyncio.to_thread(save_final_checkpoint, trainer)
        await service.trees_checkpointed()
    await service.hand_back_unstarted()
    service.released.set()
    stuck += await end_tasks([keep_alive, *([service.pruning] if service.pruning else [])])
    final_dir = Path(config.run.run_dir) / "final_model"
    await asyncio.to_thread(trainer.export_model_dir, final_dir)
    await service.publisher.close()
    service.write_final_metrics()
    service.metrics.close()
    service.announcements.close()
    service.tree_records.close()
    await trees.close()
    await bus.close()
    log.info("learner_stopped", steps=trainer.steps_done, final_model=str(final_dir))
    return EXIT_STOP_OVERRAN if stuck else 0


def follow_rank_zero(trainer: Trainer) -> None:
    """Ranks > 0 take every step rank 0 takes, on the batch rank 0 broadcasts."""
    while True:
        trees = trainer.share_batch(None)
        if not trees:
            if trainer.steps_done:
                save_final_checkpoint(trainer)
            return
        trainer.train_step(trees)
        trainer.save_rolling_checkpoint()


def run(config: LearnerConfig) -> int:
    configure_logging("learner", config.run.run_dir, config.log.level, config.log.json_file)
    if not (Path(config.model.model_dir) / "config.json").is_file():
        log.error("model_dir_invalid", model_dir=config.model.model_dir)
        print(f"tracerl learner: model.model_dir {config.model.model_dir!r} is not a model directory (no config.json)")
        return 2
    trainer = build_trainer(config)
    try:
        if trainer.rank == 0:
            write_resolved_config(config, "learner")
            status = run_role(serve(config, trainer))
        else:
            follow_rank_zero(trainer)
            status = 0
    finally:
        trainer.close()
    return end_role(status, config.weights)
