"""`BusClient`: the thin NATS/JetStream client every role uses.

It only moves bytes: protocol messages are encoded/decoded with ``protocol.codec``,
subjects come from ``protocol.Subjects``. What it adds over nats-py:

- connection from the role's credentials file, bounded reconnects, and an ``error_cb``
  that counts permission violations (nats-py reports a denied publish only there);
- pipelined batch publishing with every ack checked (``bus.acks``);
- a pull consumer that never crashes on a bad message: the reason is counted and logged,
  the raw bytes go to the run's dead-letter subject and the message is terminated;
  a message is acked only after its handler succeeded (a failing handler naks it, and
  after ``max_deliver`` attempts the bus's sweeper moves it to the DLQ), or later by a
  handler that holds it (``Delivery.hold``);
- weights in the Object Store with 1 MiB chunks and a linear-time get;
- KV helpers for the current weights announcement (policy version), the actor
  registry (one ``Heartbeat`` per ``actors.<id>`` key) and the weights broadcast's
  membership (``BroadcastJoin`` per ``broadcast.<id>`` key, the learner's ``BroadcastGroup``);
- ``counters``: a flat dict of counts for metrics.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from protocol import (
    BroadcastGroup,
    BroadcastJoin,
    Heartbeat,
    ProtocolError,
    Subjects,
    WeightsAnnouncement,
    decode,
    encode,
)
from protocol.codec import DEFAULT_MAX_BYTES
from tracerl.config import BusConfig, RunConfig
from tracerl.logs import get_logger

from . import deadletter
from .acks import AckWindow, PublishError
from .config import StreamLimits
from .permissions import ACTOR_KEY_PATTERN, ACTOR_MISMATCH, BROADCAST_JOIN_KEY_PATTERN, object_stream
from .provision import actor_consumer_config
from .server import RoleCredentials, credentials_path
from .tls import client_context

log = get_logger(__name__)

T = TypeVar("T")
PerActor = TypeVar("PerActor", Heartbeat, BroadcastJoin)

OBJECT_CHUNK_BYTES = 1024 * 1024
#: How long a registry read keeps listening after nats-py says the current state is complete.
REGISTRY_SETTLE_S = 0.25
# How long the server keeps a registry read's consumer once the reader has let it go. Each
# read is a KV watch, an ephemeral consumer; nats-py asks for 5 minutes unless told, so a
# role reading the registry every second kept about 300 of them alive, and nats-server's
# memory grew with them for as long as the run was warming up to that many.
REGISTRY_WATCH_INACTIVE_S = 5.0
_ERRORS_NOT_FATAL = (nats.errors.Error, asyncio.TimeoutError)


@dataclass
class Delivery:
    """What a handler may do with the message it is handling besides returning.

    By default the consumer acks the message once the handler returns. A handler that
    keeps the message past its return (the learner holds a tree until a checkpoint has
    it) calls ``hold``; it must then ack or nak it itself and keep it alive meanwhile.
    """

    msg: Msg
    held: bool = False

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def num_delivered(self) -> int:
        return self.msg.metadata.num_delivered

    @property
    def stream_sequence(self) -> int:
        return self.msg.metadata.sequence.stream

    async def in_progress(self) -> None:
        """Restart the ack timer during long work so the message is not redelivered."""
        await self.msg.in_progress()

    def hold(self) -> None:
        """Leave this message unacked when the handler returns."""
        self.held = True

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self) -> None:
        """Hand the message back for redelivery now rather than after ack_wait."""
        await self.msg.nak()


Handler = Callable[[T, Delivery], Awaitable[None]]


class BusClient:
    def __init__(self, role: str, subjects: Subjects, credentials: RoleCredentials, bus: BusConfig) -> None:
        self.role = role
        self.subjects = subjects
        self.bus = bus
        self._credentials = credentials
        self._counters: Counter[str] = Counter()
        self.last_error: Exception | None = None
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._acks: AckWindow | None = None
        self._closing = False

    # Connection ---------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        role: str,
        bus: BusConfig,
        run: RunConfig,
        *,
        credentials: RoleCredentials | None = None,
        allow_reconnect: bool = True,
        max_inflight_publishes: int = 2000,
        actor_id: str = "",
    ) -> BusClient:
        """Connect as ``role`` with ``bus.credentials`` (default: ``actor_id``'s own
        ``<run_dir>/credentials/actor-<id>.json`` if there is one, else ``<role>.json``).

        ``max_inflight_publishes`` bounds the messages ``publish_batch`` leaves unacked.
        """
        if credentials is None:
            credentials = RoleCredentials.read(_credentials_file(role, bus, run, actor_id))
        if credentials.role != role:
            raise ValueError(f"credentials are for role {credentials.role!r}, not {role!r}")
        if actor_id and credentials.actor_id and credentials.actor_id != actor_id:
            raise ValueError(f"credentials are actor {credentials.actor_id!r}'s own, not {actor_id!r}'s")
        client = cls(role, Subjects(run.run_id), credentials, bus)
        await client._open(allow_reconnect, max_inflight_publishes)
        return client

    @property
    def actor_id(self) -> str:
        """The one actor id this client's credential may publish as; empty for a shared one."""
        return self._credentials.actor_id

    async def _open(self, allow_reconnect: bool, max_inflight_publishes: int) -> None:
        ca_pem = self._credentials.ca_pem
        self.nc = await nats.connect(
            servers=self.bus.servers or self._credentials.servers,
            # With the run's CA the server must present a certificate it issued, for the
            # address dialled; nats-py upgrades to TLS when the server asks for it.
            tls=client_context(ca_pem) if ca_pem else None,
            user=self._credentials.user,
            password=self._credentials.password,
            name=f"tracerl-{self.role}-{self.subjects.run_id}",
            inbox_prefix=self._credentials.inbox_prefix,
            connect_timeout=self.bus.connect_timeout_s,
            allow_reconnect=allow_reconnect,
            max_reconnect_attempts=self.bus.max_reconnect_attempts,
            reconnect_time_wait=self.bus.reconnect_wait_s,
            # nats-py's default waits 30 s for a drain; closing must stay prompt.
            drain_timeout=max(1.0, self.bus.request_timeout_s),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self.nc.jetstream(timeout=self.bus.request_timeout_s)
        self._acks = AckWindow(self.nc, max_inflight=max_inflight_publishes, ack_timeout=self.bus.request_timeout_s)
        server = self.nc.connected_url.netloc if self.nc.connected_url else None
        log.info("bus_connected", role=self.role, run_id=self.subjects.run_id, server=server)

    async def _on_error(self, err: Exception) -> None:
        self.last_error = err
        if "permissions violation" in str(err).lower():
            self._counters["permission_violations"] += 1
            log.error("bus_permission_violation", role=self.role, error=str(err))
        else:
            self._counters["connection_errors"] += 1
            log.warning("bus_error", role=self.role, error=repr(err))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self._counters["disconnects"] += 1
        log.warning("bus_disconnected", role=self.role)

    async def _on_reconnected(self) -> None:
        self._counters["reconnects"] += 1
        log.info("bus_reconnected", role=self.role)

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("BusClient is not connected")
        return self._js

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def count(self, name: str, amount: int = 1) -> None:
        self._counters[name] += amount

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except nats.errors.Error:
                # Reconnecting (the server is restarting) or a drain that timed out: nothing
                # more can be flushed, and a role stopping then must still exit cleanly.
                await self.nc.close()
        self.nc, self._js, self._acks = None, None, None

    async def __aenter__(self) -> BusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Publishing ---------------------------------------------------------------------

    async def publish(
        self, subject: str, message: Any, *, msg_id: str | None = None, timeout: float | None = None
    ) -> api.PubAck:
        """Publish one protocol message through JetStream and wait for the stream's ack.

        ``msg_id`` (e.g. a node id) lets the stream drop a duplicate within its window.
        """
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.js.publish(subject, encode(message), timeout=timeout, headers=headers)
        self._counters["published"] += 1
        return ack

    async def publish_batch(
        self, items: Iterable[tuple[str, Any]], *, msg_ids: Iterable[str | None] | None = None
    ) -> list[api.PubAck]:
        """Publish many messages pipelined and wait until the stream acked every one.

        Raises ``PublishError`` if any was not acked; resending the batch with the same
        ``msg_ids`` is then safe (the stream drops what it already holds).
        """
        # Encoded lazily, one message ahead of the socket, so a batch never sits in memory twice.
        messages: Iterable[tuple[str, bytes, str | None]]
        if msg_ids is None:
            messages = ((subject, encode(message), None) for subject, message in items)
        else:
            messages = (
                (subject, encode(message), msg_id) for (subject, message), msg_id in zip(items, msg_ids, strict=True)
            )
        return await self.publish_encoded(messages)

    async def publish_encoded(self, messages: Iterable[tuple[str, bytes, str | None]]) -> list[api.PubAck]:
        """``publish_batch`` for payloads already encoded: ``(subject, payload, msg_id)``."""
        if self._acks is None:
            raise RuntimeError("BusClient is not connected")
        try:
            acks = await self._acks.publish_all(messages)
        except PublishError as err:
            self._counters["publish_failed"] += err.unacked
            log.warning("publish_not_acked", role=self.role, unacked=err.unacked, sent=err.sent, reason=err.reason)
            raise
        self._counters["published"] += len(acks)
        return acks

    # Consuming ----------------------------------------------------------------------

    async def pull_consumer(
        self, stream: str, durable: str, expected: type[T], *, max_bytes: int | None = None
    ) -> PullConsumer[T]:
        """Bind to an existing durable (provisioned by the bus, or by ensure_actor_consumer).

        Messages larger than ``max_bytes`` (default ``bus.max_message_bytes``) are rejected
        as ``oversized`` without decoding.
        """
        sub = await self.js.pull_subscribe_bind(durable, stream=stream)
        limit = self.bus.max_message_bytes if max_bytes is None else max_bytes
        return PullConsumer(self, sub, stream, durable, expected, limit)

    async def ensure_actor_consumer(self, actor_id: str, limits: StreamLimits | None = None) -> str:
        """Create (or re-bind to) this actor's own durable on its work subject; returns its name."""
        config = actor_consumer_config(self.subjects, actor_id, limits or StreamLimits())
        await self.js.add_consumer(self.subjects.work_stream, config=config)
        assert config.durable_name is not None
        return config.durable_name

    async def dead_letter(self, msg: Msg, *, reason: str, detail: str, consumer: str) -> None:
        """Copy a message's raw bytes and reason to the DLQ; failures are counted, not raised."""
        meta_stream, meta_seq = "", None
        try:
            meta_stream, meta_seq = msg.metadata.stream, msg.metadata.sequence.stream
        except (nats.errors.Error, AttributeError, ValueError, IndexError):
            pass
        headers = deadletter.dead_letter_headers(
            reason=reason,
            detail=detail,
            source_subject=msg.subject,
            source_stream=meta_stream,
            source_sequence=meta_seq,
            consumer=consumer,
            role=self.role,
        )
        try:
            await self.js.publish(self.subjects.dead_letter, msg.data, headers=headers)
            self._counters["dead_lettered"] += 1
        except _ERRORS_NOT_FATAL as err:
            self._counters["dead_letter_failed"] += 1
            log.error("dead_letter_failed", reason=reason, error=repr(err))

    # Weights (Object Store) ---------------------------------------------------------

    async def put_object(self, name: str, data: bytes) -> api.ObjectInfo:
        store = await self.js.object_store(self.subjects.weights_bucket)
        meta = api.ObjectMeta(name=name, options=api.ObjectMetaOptions(max_chunk_size=OBJECT_CHUNK_BYTES))
        return await store.put(name, data, meta=meta)

    async def get_object(self, name: str) -> bytes:
        store = await self.js.object_store(self.subjects.weights_bucket)
        # The default get concatenates chunk by chunk (quadratic); writeinto is linear.
        sink = io.BytesIO()
        await store.get(name, writeinto=sink)
        return sink.getvalue()

    async def list_objects(self) -> list[str]:
        """The names of every object in the weights bucket (deleted ones excluded)."""
        store = await self.js.object_store(self.subjects.weights_bucket)
        try:
            return [info.name for info in await store.list(ignore_deletes=True)]
        except nats.js.errors.NotFoundError:  # nats-py's answer for an empty bucket
            return []

    async def delete_object(self, name: str) -> None:
        """Delete an object's chunks and then its delete marker: a run of days deletes one name per
        policy version, and the markers alone would keep growing."""
        store = await self.js.object_store(self.subjects.weights_bucket)
        await store.delete(name)
        meta_subject = f"$O.{self.subjects.weights_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        await self.js.purge_stream(object_stream(self.subjects.weights_bucket), subject=meta_subject)

    # Run state (KV) -----------------------------------------------------------------

    async def _state(self):  # -> nats.js.kv.KeyValue
        return await self.js.key_value(self.subjects.state_bucket)

    async def announce_weights(self, announcement: WeightsAnnouncement) -> int:
        """Learner only: make ``announcement`` the current policy, then notify subscribers.

        The KV key ``policy_version`` holds the whole announcement (version, object name,
        sha256), so a late joiner learns everything from one read; the core-NATS publish
        on the announce subject is only a low-latency nudge. Returns the KV revision.
        """
        kv = await self._state()
        revision = await kv.put(Subjects.POLICY_VERSION_KEY, encode(announcement))
        assert self.nc is not None
        await self.nc.publish(self.subjects.weights_announce, encode(announcement))
        return revision

    async def get_weights_announcement(self) -> WeightsAnnouncement | None:
        kv = await self._state()
        try:
            entry = await kv.get(Subjects.POLICY_VERSION_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return self._decode_entry(entry.value, WeightsAnnouncement, Subjects.POLICY_VERSION_KEY)

    async def get_policy_version(self) -> int | None:
        announcement = await self.get_weights_announcement()
        return None if announcement is None else announcement.policy_version

    async def watch_weights(
        self, stop: asyncio.Event | None = None, poll_interval_s: float = 2.0
    ) -> AsyncIterator[WeightsAnnouncement]:
        """Yield the current announcement (if any), then each one with a higher version,
        until ``stop`` is set.

        The key is re-read on every announce nudge and at least every ``poll_interval_s``.
        Not a KV watch: that is an ephemeral consumer which a restarted nats-server forgets
        without telling the client, and the watch then waits forever. The nudge is a core
        subscription, which nats-py restores on reconnect; the poll covers nudges sent
        while this client was disconnected. Read failures are counted and retried.
        The wait also ends on ``stop``: a cancellation dropped by a library (Python 3.11's
        ``wait_for`` can lose one racing a nudge) would otherwise keep the watch going.
        """
        assert self.nc is not None
        nudged = asyncio.Event()

        async def on_nudge(msg: Msg) -> None:
            nudged.set()

        sub = await self.nc.subscribe(self.subjects.weights_announce, cb=on_nudge)
        last: WeightsAnnouncement | None = None
        try:
            while stop is None or not stop.is_set():
                nudged.clear()
                try:
                    current = await self.get_weights_announcement()
                except _ERRORS_NOT_FATAL as err:
                    self._counters["weights_read_failed"] += 1
                    log.debug("weights_read_failed", error=repr(err))
                    current = None
                if current is not None and (last is None or current.policy_version > last.policy_version):
                    last = current
                    yield current
                await _wait_for_either(nudged, stop, poll_interval_s)
        finally:
            try:
                await sub.unsubscribe()
            except _ERRORS_NOT_FATAL:
                pass

    def _decode_entry(self, raw: bytes | None, expected: type[T], key: str) -> T | None:
        try:
            return decode(raw or b"", expected, run_id=self.subjects.run_id)
        except ProtocolError as err:
            self._counters[f"rejected.{err.reason}"] += 1
            log.warning("kv_entry_rejected", key=key, reason=err.reason, detail=err.detail[:200])
            return None

    async def put_actor(self, heartbeat: Heartbeat) -> int:
        """Register or refresh an actor in the registry (key ``actors.<id>``)."""
        kv = await self._state()
        return await kv.put(Subjects.actor_key(heartbeat.actor_id), encode(heartbeat))

    async def get_actors(self) -> dict[str, Heartbeat]:
        """Every registered actor's latest heartbeat; unreadable entries, and beats under
        another actor's key, are counted and skipped."""
        return await self._read_per_actor(ACTOR_KEY_PATTERN, Heartbeat, Subjects.actor_key)

    # Weights broadcast membership (KV) ----------------------------------------------

    async def put_broadcast_join(self, join: BroadcastJoin) -> int:
        """Actor: ask to join the learner's weights broadcast (key ``broadcast.<id>``)."""
        kv = await self._state()
        return await kv.put(Subjects.broadcast_join_key(join.actor_id), encode(join))

    async def delete_broadcast_join(self, actor_id: str) -> None:
        kv = await self._state()
        await kv.delete(Subjects.broadcast_join_key(actor_id))

    async def get_broadcast_joins(self) -> dict[str, BroadcastJoin]:
        """Every actor's latest request to join the broadcast, checked like the registry."""
        return await self._read_per_actor(BROADCAST_JOIN_KEY_PATTERN, BroadcastJoin, Subjects.broadcast_join_key)

    async def put_broadcast_group(self, group: BroadcastGroup) -> int:
        """Learner only: make ``group`` the current broadcast group."""
        kv = await self._state()
        return await kv.put(Subjects.BROADCAST_GROUP_KEY, encode(group))

    async def get_broadcast_group(self) -> BroadcastGroup | None:
        kv = await self._state()
        try:
            entry = await kv.get(Subjects.BROADCAST_GROUP_KEY)
        except nats.js.errors.KeyNotFoundError:
            return None
        return self._decode_entry(entry.value, BroadcastGroup, Subjects.BROADCAST_GROUP_KEY)

    async def _read_per_actor(
        self, pattern: str, expected: type[PerActor], key_of: Callable[[str], str]
    ) -> dict[str, PerActor]:
        """The latest entry under every key of ``pattern``, by actor id. An entry naming an
        actor other than its key's is counted (``rejected.actor_mismatch``) and skipped."""
        kv = await self._state()
        watcher = await kv.watch(pattern, ignore_deletes=True, inactive_threshold=REGISTRY_WATCH_INACTIVE_S)
        entries: dict[str, PerActor] = {}
        loop = asyncio.get_running_loop()
        settle_until: float | None = None
        try:
            while True:
                if settle_until is None:
                    timeout = self.bus.request_timeout_s
                else:
                    timeout = settle_until - loop.time()
                    if timeout <= 0:
                        break
                try:
                    entry = await watcher.updates(timeout=timeout)
                except nats.errors.TimeoutError:
                    if settle_until is None:
                        raise
                    break
                if entry is None:
                    # nats-py may mark the end of the current state before entries already on
                    # their way are handed over (its consumer-info check races the first
                    # delivery), which reads a live actor as gone; take what follows shortly
                    # (bounded: live heartbeats keep arriving).
                    settle_until = loop.time() + REGISTRY_SETTLE_S
                    continue
                value = self._decode_entry(entry.value, expected, entry.key)
                if value is not None and entry.key != key_of(value.actor_id):
                    # An actor may write only its own key; an entry naming another actor is a forgery.
                    self._counters[f"rejected.{ACTOR_MISMATCH}"] += 1
                    log.warning("kv_entry_actor_mismatch", key=entry.key, claimed=value.actor_id)
                elif value is not None:
                    entries[value.actor_id] = value
        finally:
            await watcher.stop()
        return entries


class PullConsumer(Generic[T]):
    """Fetch batches from a durable, decode each message, run the handler, ack or reject."""

    def __init__(
        self,
        client: BusClient,
        sub: JetStreamContext.PullSubscription,
        stream: str,
        durable: str,
        expected: type[T],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.client = client
        self.sub = sub
        self.stream = stream
        self.durable = durable
        self.expected = expected

    async def process_batch(self, handler: Handler[T], *, batch: int = 64, timeout: float = 1.0) -> int:
        """Fetch up to ``batch`` messages (waiting at most ``timeout``); returns how many were handled."""
        try:
            msgs = await self.sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):  # fetch raises either
            return 0
        handled = 0
        for msg in msgs:
            if await self._handle(msg, handler):
                handled += 1
        return handled

    async def _handle(self, msg: Msg, handler: Handler[T]) -> bool:
        counters = self.client._counters
        try:
            message = decode(msg.data, self.expected, max_bytes=self.max_bytes, run_id=self.client.subjects.run_id)
        except ProtocolError as err:
            counters[f"rejected.{err.reason}"] += 1
            log.warning(
                "message_rejected",
                consumer=self.durable,
                subject=msg.subject,
                reason=err.reason,
                detail=err.detail[:200],
            )
            await self.client.dead_letter(msg, reason=err.reason, detail=err.detail, consumer=self.durable)
            await self._settle(msg.term)
            return False
        delivery = Delivery(msg)
        try:
            await handler(message, delivery)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a handler bug must not stop the consumer; redelivery decides
            counters["handler_errors"] += 1
            log.exception("handler_failed", consumer=self.durable, subject=msg.subject, error=repr(err))
            await self._settle(msg.nak)
            return False
        if not delivery.held:
            await self._settle(msg.ack)
        counters["handled"] += 1
        return True

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        try:
            await action()
        except _ERRORS_NOT_FATAL as err:
            # The server will redeliver after ack_wait; ids are idempotent downstream.
            self.client._counters["settle_failed"] += 1
            log.warning("settle_failed", consumer=self.durable, error=repr(err))

    async def run(self, handler: Handler[T], stop: asyncio.Event, *, batch: int = 64, timeout: float = 1.0) -> None:
        """Serve until ``stop`` is set. Connection trouble is logged and retried, never raised."""
        while not stop.is_set():
            try:
                await self.process_batch(handler, batch=batch, timeout=timeout)
            except _ERRORS_NOT_FATAL as err:
                self.client._counters["fetch_errors"] += 1
                log.warning("fetch_failed", consumer=self.durable, error=repr(err))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=timeout)
                except TimeoutError:
                    pass

    async def limits(self) -> api.ConsumerConfig:
        """The durable's settings as the server has them (ack_wait, max_deliver, ...)."""
        info = await self.sub.consumer_info()
        return info.config

    async def close(self) -> None:
        try:
            await self.sub.unsubscribe()
        except _ERRORS_NOT_FATAL:
            pass


def _credentials_file(role: str, bus: BusConfig, run: RunConfig, actor_id: str) -> Path:
    if bus.credentials:
        return Path(bus.credentials)
    if actor_id:
        own = credentials_path(run.run_dir, role, actor_id)
        if own.is_file():
            return own
    return credentials_path(run.run_dir, role)


async def _wait_for_either(first: asyncio.Event, second: asyncio.Event | None, timeout: float) -> None:
    """Return when either event is set or ``timeout`` passes."""
    waiters = [asyncio.ensure_future(event.wait()) for event in (first, second) if event is not None]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
