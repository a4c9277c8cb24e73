"""Admin-side, idempotent provisioning of one run's streams, consumers and buckets,
and the sweeper that moves poisoned messages to the dead-letter stream.

Stream layout per run (all file storage, each stream and bucket with ``limits.num_replicas``
copies; the consumers inherit their stream's replica count):

- NODES  ``tracerl.<run>.nodes.<actor id>`` and ``…nodes.<actor id>.<shard>``  limits retention
  (``max_age_s``, ``nodes_max_bytes``); durable ``allocator`` on the first (allocator shard 0);
  each allocator shard k > 0 creates its own on ``…nodes.*.<k>``.
- WORK   ``tracerl.<run>.work.shared`` and ``…work.actor.*``  work-queue retention: an item
  is gone once acked; durable ``actors`` on the shared subject; per-actor durables are
  created by actors.
- TREES  ``tracerl.<run>.trees``  limits retention (``max_age_s``, ``trees_max_bytes``);
  durable ``learner``, with no cap on unacked messages: the learner holds every tree until
  a checkpoint has it.
- DLQ    ``tracerl.<run>.dlq`` plus the server's MAX_DELIVERIES advisories for the three
  streams above (``max_age_s``, ``dead_letter_max_bytes``); durable ``dlq_sweeper`` on the
  advisories.
- KV     ``tracerl_<run>_state``: one value per key (the policy version, one heartbeat per
  actor id). Object store ``tracerl_<run>_weights``: one object per policy version, pruned
  by the learner (``learner.weights_retention``).

When a message reaches ``max_deliver`` the server only publishes an advisory; the message
stays in its stream (and blocks nothing, but is never delivered again). The sweeper reads
each advisory, copies the message with its reason into the DLQ and deletes the original.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from protocol.subjects import Subjects
from tracerl.logs import get_logger

from . import deadletter
from .config import StreamLimits

log = get_logger(__name__)

DLQ_SWEEPER_CONSUMER = "dlq_sweeper"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
UNLIMITED = -1


def max_deliveries_advisory(stream: str) -> str:
    return f"{MAX_DELIVERIES_ADVISORY}.{stream}.*"


def actor_work_filter(subjects: Subjects) -> str:
    return f"{subjects.prefix}.work.actor.*"


@dataclass(frozen=True)
class Layout:
    """Every stream and durable consumer of a run, as nats-py config objects (no I/O)."""

    streams: tuple[api.StreamConfig, ...]
    consumers: tuple[tuple[str, api.ConsumerConfig], ...]


def run_layout(subjects: Subjects, limits: StreamLimits) -> Layout:
    s = subjects
    common: dict[str, Any] = {
        "storage": api.StorageType.FILE,
        "duplicate_window": limits.duplicate_window_s,
        "num_replicas": limits.num_replicas,
    }
    watched = (s.nodes_stream, s.work_stream, s.trees_stream)
    streams = (
        api.StreamConfig(
            name=s.nodes_stream,
            subjects=[s.nodes, s.sharded_nodes],
            retention=api.RetentionPolicy.LIMITS,
            max_age=limits.max_age_s,
            max_bytes=limits.nodes_max_bytes or UNLIMITED,
            **common,
        ),
        api.StreamConfig(
            name=s.work_stream,
            subjects=[s.work_shared, actor_work_filter(s)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            **common,
        ),
        api.StreamConfig(
            name=s.trees_stream,
            subjects=[s.trees],
            retention=api.RetentionPolicy.LIMITS,
            max_age=limits.max_age_s,
            max_bytes=limits.trees_max_bytes or UNLIMITED,
            **common,
        ),
        api.StreamConfig(
            name=s.dead_letter_stream,
            subjects=[s.dead_letter, *(max_deliveries_advisory(name) for name in watched)],
            retention=api.RetentionPolicy.LIMITS,
            max_age=limits.max_age_s,
            max_bytes=limits.dead_letter_max_bytes or UNLIMITED,
            **common,
        ),
    )

    def durable(name: str, filter_subject: str, max_ack_pending: int | None = None) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=limits.ack_wait_s,
            max_deliver=limits.max_deliver,
            max_ack_pending=max_ack_pending,
        )

    sweeper = api.ConsumerConfig(
        name=DLQ_SWEEPER_CONSUMER,
        durable_name=DLQ_SWEEPER_CONSUMER,
        filter_subjects=[max_deliveries_advisory(name) for name in watched],
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=limits.ack_wait_s,
    )
    consumers = (
        (s.nodes_stream, durable(s.allocator_consumer, s.nodes)),
        (s.work_stream, durable(s.shared_work_consumer, s.work_shared)),
        # The server's default of 1000 unacked would stop deliveries to a learner holding the
        # trees of several uncheckpointed steps, and the step it waits for would never come.
        (s.trees_stream, durable(s.learner_consumer, s.trees, max_ack_pending=UNLIMITED)),
        (s.dead_letter_stream, sweeper),
    )
    return Layout(streams=streams, consumers=consumers)


def actor_consumer_config(subjects: Subjects, actor_id: str, limits: StreamLimits) -> api.ConsumerConfig:
    """The durable an actor creates for its own work subject (see bus.permissions)."""
    name = subjects.actor_work_consumer(actor_id)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.work_for_actor(actor_id),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=limits.ack_wait_s,
        max_deliver=limits.max_deliver,
        inactive_threshold=limits.actor_consumer_inactive_s,
    )


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    if config.name is None:
        raise ValueError("a stream config needs a name")
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        log.info("stream_created", stream=config.name)
        return
    # Same name: bring the limits up to date (retention and storage cannot change in place).
    await js.update_stream(config)


async def provision_run(js: JetStreamContext, subjects: Subjects, limits: StreamLimits) -> None:
    """Create or update everything a run needs. Safe to call again at every bus start."""
    layout = run_layout(subjects, limits)
    for stream in layout.streams:
        await _ensure_stream(js, stream)
    for stream_name, consumer in layout.consumers:
        await js.add_consumer(stream_name, config=consumer)
    replicas = limits.num_replicas
    await js.create_key_value(bucket=subjects.state_bucket, history=1, storage=api.StorageType.FILE, replicas=replicas)
    await js.create_object_store(
        subjects.weights_bucket, config=api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=replicas)
    )
    log.info("run_provisioned", run_id=subjects.run_id)


@dataclass(frozen=True)
class MaxDeliveriesAdvisory:
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int

    @classmethod
    def parse(cls, payload: bytes) -> MaxDeliveriesAdvisory:
        data = json.loads(payload)
        return cls(
            stream=str(data["stream"]),
            consumer=str(data["consumer"]),
            stream_seq=int(data["stream_seq"]),
            deliveries=int(data.get("deliveries", 0)),
        )


async def move_to_dead_letter(js: JetStreamContext, subjects: Subjects, advisory: MaxDeliveriesAdvisory) -> bool:
    """Copy the poisoned message into the DLQ, then delete it; False if it was already gone."""
    try:
        original = await js.get_msg(advisory.stream, advisory.stream_seq)
    except nats.js.errors.NotFoundError:
        return False
    headers = deadletter.dead_letter_headers(
        reason=deadletter.MAX_DELIVERIES,
        detail=f"not acked after {advisory.deliveries} deliveries",
        source_subject=original.subject or "",
        source_stream=advisory.stream,
        source_sequence=advisory.stream_seq,
        consumer=advisory.consumer,
    )
    await js.publish(subjects.dead_letter, original.data or b"", headers=headers)
    try:
        await js.delete_msg(advisory.stream, advisory.stream_seq)
    except nats.js.errors.NotFoundError:
        # Acked meanwhile by a slow holder; the DLQ copy is then only a record.
        pass
    return True


async def sweep_dead_letters(js: JetStreamContext, subjects: Subjects, *, batch: int = 64, wait_s: float = 0.5) -> int:
    """Handle the advisories waiting now; returns how many messages moved to the DLQ."""
    sub = await js.pull_subscribe_bind(DLQ_SWEEPER_CONSUMER, stream=subjects.dead_letter_stream)
    moved = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=wait_s)
            except (TimeoutError, nats.errors.TimeoutError):  # fetch raises either
                return moved
            for msg in msgs:
                try:
                    advisory = MaxDeliveriesAdvisory.parse(msg.data)
                except (ValueError, KeyError, TypeError) as err:
                    log.warning("dlq_advisory_unreadable", error=str(err))
                    await msg.term()
                    continue
                if await move_to_dead_letter(js, subjects, advisory):
                    moved += 1
                    log.warning(
                        "dead_lettered",
                        reason=deadletter.MAX_DELIVERIES,
                        stream=advisory.stream,
                        seq=advisory.stream_seq,
                        consumer=advisory.consumer,
                    )
                await msg.ack()
    finally:
        await sub.unsubscribe()


async def run_dead_letter_sweeper(
    js: JetStreamContext, subjects: Subjects, stop: asyncio.Event, *, interval_s: float = 1.0
) -> None:
    """Sweep until ``stop`` is set; errors are logged and retried, never fatal to the bus."""
    while not stop.is_set():
        try:
            await sweep_dead_letters(js, subjects, wait_s=interval_s)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            log.warning("dlq_sweep_failed", run_id=subjects.run_id, error=repr(err))
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
