"""The bus against a real nats-server: round trips, rejection, permissions, redelivery, DLQ."""

from __future__ import annotations

import asyncio
import random
import time

import msgpack
import nats
import nats.errors
import pytest

from bus import deadletter
from bus.acks import PublishError
from bus.client import REGISTRY_WATCH_INACTIVE_S, BusClient, Delivery
from bus.provision import sweep_dead_letters
from protocol import (
    BroadcastGroup,
    BroadcastJoin,
    CompletedTree,
    Heartbeat,
    Subjects,
    TurnNode,
    WeightsAnnouncement,
    WorkItem,
    encode,
)
from protocol.messages import replace
from tests.fixtures.nats import BusRun
from tests.protocol.strategies import realistic_turn_node, sample_messages

pytestmark = pytest.mark.nats


def _by_type(run_id: str) -> dict[type, object]:
    return {type(m): m for m in sample_messages(run_id)}


async def _drain(consumer, handler, until, *, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not until():
        assert time.monotonic() < deadline, "consumer did not finish in time"
        await consumer.process_batch(handler, batch=256, timeout=0.2)


async def _dead_letters(admin: BusClient, run: BusRun) -> list:
    """Every message stored on the run's dead-letter subject, read by sequence."""
    stream = run.subjects.dead_letter_stream
    info = await admin.js.stream_info(stream)
    letters = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await admin.js.get_msg(stream, seq)
        if msg.subject == run.subjects.dead_letter:
            letters.append(msg)
    return letters


def test_every_message_type_round_trips_through_jetstream(bus_run: BusRun) -> None:
    s = bus_run.subjects
    sent = _by_type(s.run_id)

    async def main() -> None:
        async with (
            await bus_run.connect("actor") as actor,
            await bus_run.connect("allocator") as allocator,
            await bus_run.connect("learner") as learner,
        ):
            await actor.publish(s.nodes_from("actor-0"), sent[TurnNode])
            await allocator.publish(s.work_shared, sent[WorkItem])
            await allocator.publish(s.trees, sent[CompletedTree])
            await learner.announce_weights(sent[WeightsAnnouncement])
            await actor.put_actor(sent[Heartbeat])

            received: list = []

            async def keep(message, delivery: Delivery) -> None:
                received.append(message)

            for client, stream, durable, cls in (
                (allocator, s.nodes_stream, s.allocator_consumer, TurnNode),
                (actor, s.work_stream, s.shared_work_consumer, WorkItem),
                (learner, s.trees_stream, s.learner_consumer, CompletedTree),
            ):
                consumer = await client.pull_consumer(stream, durable, cls)
                assert await consumer.process_batch(keep, timeout=2.0) == 1
                await consumer.close()
            assert received == [sent[TurnNode], sent[WorkItem], sent[CompletedTree]]
            assert await actor.get_weights_announcement() == sent[WeightsAnnouncement]
            assert await actor.get_policy_version() == sent[WeightsAnnouncement].policy_version
            assert await allocator.get_actors() == {"a1": sent[Heartbeat]}
            for client in (actor, allocator, learner):
                assert client.counters.get("permission_violations", 0) == 0

    asyncio.run(main())


def test_a_broadcast_join_under_another_actors_key_is_refused_and_counted(bus_run: BusRun) -> None:
    s = bus_run.subjects
    join = _by_type(s.run_id)[BroadcastJoin]

    async def main() -> None:
        async with await bus_run.connect("actor") as actor, await bus_run.connect("learner") as learner:
            await actor.put_broadcast_join(join)
            # The shared actor credential may write any broadcast key; the learner checks whose it is.
            kv = await actor.js.key_value(s.state_bucket)
            await kv.put(Subjects.broadcast_join_key("a2"), encode(join))
            assert await learner.get_broadcast_joins() == {join.actor_id: join}
            assert learner.counters["rejected.actor_mismatch"] == 1

    asyncio.run(main())


def test_registry_reads_leave_no_consumer_on_the_server(bus_run: BusRun) -> None:
    """A registry read is a KV watch, an ephemeral consumer: once the read is over the server
    must let the consumer go within seconds, or a role reading every second piles them up."""
    s = bus_run.subjects
    heartbeat = _by_type(s.run_id)[Heartbeat]
    reads = 12

    async def main() -> None:
        async with await bus_run.connect("actor") as actor, await bus_run.connect("allocator") as allocator:
            await actor.put_actor(heartbeat)
            stream = f"KV_{s.state_bucket}"
            before = (await allocator.js.stream_info(stream)).state.consumer_count or 0
            for _ in range(reads):
                assert await allocator.get_actors() == {heartbeat.actor_id: heartbeat}
            deadline = time.monotonic() + REGISTRY_WATCH_INACTIVE_S + 25.0
            while True:
                left = (await allocator.js.stream_info(stream)).state.consumer_count or 0
                if left <= before or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert left <= before, f"{left - before} of {reads} registry reads still hold a consumer"

    asyncio.run(main())


def test_bad_messages_are_rejected_counted_and_dead_lettered_while_valid_traffic_flows(bus_run: BusRun) -> None:
    s = bus_run.subjects
    rng = random.Random(1234)
    valid = [realistic_turn_node(s.run_id, i, action_tokens=20, observation_tokens=5) for i in range(200)]
    body = msgpack.unpackb(encode(valid[0]), raw=False)["body"]

    def envelope(version: int = TurnNode.SCHEMA_VERSION, **changes) -> bytes:
        new_body = {k: v for k, v in {**body, **changes}.items() if v is not _DROP}
        return msgpack.packb({"schema": "turn_node", "version": version, "body": new_body}, use_bin_type=True)

    crafted = {
        "unsupported_version": envelope(version=TurnNode.SCHEMA_VERSION + 1),
        "schema_violation": envelope(depth=_DROP),  # missing field
        "schema_violation/extra": envelope(extra_field=1),
        "schema_violation/type": envelope(depth="one"),
        "oversized": encode(replace(valid[0], env_snapshot=b"x" * 70_000)),
        "wrong_schema": encode(sample_messages(s.run_id)[1]),
    }
    garbage = [rng.randbytes(rng.randint(0, 300)) for _ in range(1000)]
    bad = garbage + list(crafted.values())
    rng.shuffle(bad)
    # Interleave: a valid node after every sixth bad message, the rest at the end.
    traffic: list[bytes] = []
    valid_iter = iter(valid)
    for i, payload in enumerate(bad):
        traffic.append(payload)
        if i % 6 == 0:
            traffic.append(encode(next(valid_iter)))
    traffic.extend(encode(v) for v in valid_iter)

    async def main() -> None:
        async with await bus_run.connect("admin") as admin, await bus_run.connect("allocator") as allocator:
            futures = [await admin.js.publish_async(s.nodes_from("actor-0"), p) for p in traffic]
            await asyncio.gather(*futures)
            received: list[TurnNode] = []

            async def keep(node: TurnNode, delivery: Delivery) -> None:
                received.append(node)

            consumer = await allocator.pull_consumer(s.nodes_stream, s.allocator_consumer, TurnNode, max_bytes=64_000)
            total = len(traffic)
            await _drain(
                consumer,
                keep,
                lambda: (
                    sum(v for k, v in allocator.counters.items() if k.startswith("rejected.")) + len(received) >= total
                ),
            )
            await consumer.close()

            assert received == valid  # all delivered, in order
            counters = allocator.counters
            rejected = {k.removeprefix("rejected."): v for k, v in counters.items() if k.startswith("rejected.")}
            assert sum(rejected.values()) == len(bad)
            assert rejected["unsupported_version"] == 1 and rejected["oversized"] == 1
            assert rejected["wrong_schema"] == 1 and rejected["schema_violation"] >= 3
            assert counters["dead_lettered"] == len(bad) and counters["handled"] == len(valid)
            assert counters.get("permission_violations", 0) == 0

            letters = await _dead_letters(admin, bus_run)
            assert sorted(m.data or b"" for m in letters) == sorted(bad)
            assert {m.headers[deadletter.REASON] for m in letters} == set(rejected)
            assert all(m.headers[deadletter.SOURCE_SUBJECT] == s.nodes_from("actor-0") for m in letters)
            info = await admin.js.consumer_info(s.nodes_stream, s.allocator_consumer)
            assert info.num_ack_pending == 0 and info.num_pending == 0

    asyncio.run(main())


_DROP = object()


def test_unauthenticated_and_wrong_password_clients_are_refused(bus_run: BusRun) -> None:
    async def main() -> None:
        for kwargs in ({}, {"user": "actor", "password": "wrong"}):
            started = time.monotonic()
            with pytest.raises((nats.errors.NoServersError, nats.errors.AuthorizationError, nats.errors.Error)):
                await nats.connect(
                    bus_run.server.url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0, **kwargs
                )
            assert time.monotonic() - started < 5

    asyncio.run(main())


def test_role_permissions_are_enforced(bus_run: BusRun) -> None:
    s = bus_run.subjects
    announcement = _by_type(s.run_id)[WeightsAnnouncement]
    quick = replace(bus_run.bus, request_timeout_s=0.5)
    actor: BusClient

    async def denied(client: BusClient, operation) -> None:
        before = client.counters.get("permission_violations", 0)
        with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.Error)):
            await asyncio.wait_for(operation, timeout=2.0)
        for _ in range(50):  # error_cb runs on the reader task, just after the server's -ERR
            if client.counters.get("permission_violations", 0) > before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no permission violation reported")

    async def steal_nodes() -> None:
        sub = await actor.js.pull_subscribe_bind(s.allocator_consumer, stream=s.nodes_stream)
        await sub.fetch(1, timeout=0.5)

    async def main() -> None:
        nonlocal actor
        actor = await BusClient.connect("actor", quick, bus_run.run)
        learner = await BusClient.connect("learner", quick, bus_run.run)
        allocator = await BusClient.connect("allocator", quick, bus_run.run)
        try:
            # Allowed for the actor: registry, reading version and weights.
            await learner.put_object("policy-1", b"w" * 10)
            await learner.announce_weights(announcement)
            assert await actor.get_object("policy-1") == b"w" * 10
            assert await actor.get_policy_version() == announcement.policy_version
            await actor.put_actor(_by_type(s.run_id)[Heartbeat])
            # Denied for the actor.
            await denied(actor, actor.put_object("policy-1", b"evil"))
            await denied(actor, actor.announce_weights(announcement))
            await denied(actor, actor.publish(s.work_shared, _by_type(s.run_id)[WorkItem]))
            await denied(actor, steal_nodes())
            await denied(
                actor, actor.js.add_consumer(s.work_stream, durable_name="sneaky", filter_subject=s.work_shared)
            )
            # Denied for the others.
            await denied(allocator, allocator.publish(s.nodes_from("actor-0"), _by_type(s.run_id)[TurnNode]))
            await denied(allocator, allocator.put_actor(_by_type(s.run_id)[Heartbeat]))
            await denied(learner, learner.publish(s.work_shared, _by_type(s.run_id)[WorkItem]))
            # The broadcast's membership: actors ask under their own keys, only the learner sets the group.
            join, group = _by_type(s.run_id)[BroadcastJoin], _by_type(s.run_id)[BroadcastGroup]
            await actor.put_broadcast_join(join)
            await learner.put_broadcast_group(group)
            assert await learner.get_broadcast_joins() == {join.actor_id: join}
            assert await actor.get_broadcast_group() == group
            await denied(actor, actor.put_broadcast_group(group))
            await denied(allocator, allocator.put_broadcast_join(join))
            assert await learner.get_object("policy-1") == b"w" * 10  # the denied overwrite changed nothing
            assert actor.counters["permission_violations"] >= 5  # one per denied call, some send twice
            assert actor.nc is not None and actor.nc.is_connected  # the connection survives
        finally:
            for client in (actor, learner, allocator):
                await client.close()

    asyncio.run(main())


def test_unacked_work_is_redelivered_after_its_consumer_dies(bus_run: BusRun) -> None:
    s = bus_run.subjects
    item = _by_type(s.run_id)[WorkItem]

    async def main() -> None:
        async with await bus_run.connect("allocator") as allocator:
            await allocator.publish(s.work_shared, item)
        doomed = await bus_run.connect("actor")
        sub = await doomed.js.pull_subscribe_bind(s.shared_work_consumer, stream=s.work_stream)
        [first] = await sub.fetch(1, timeout=2.0)
        assert first.metadata.num_delivered == 1
        assert doomed.nc is not None
        await doomed.nc.close()  # dies holding the message, without ack

        async with await bus_run.connect("actor") as survivor:
            consumer = await survivor.pull_consumer(s.work_stream, s.shared_work_consumer, WorkItem)
            got: list[tuple[WorkItem, int]] = []

            async def keep(work: WorkItem, delivery: Delivery) -> None:
                got.append((work, delivery.num_delivered))

            started = time.monotonic()
            await _drain(consumer, keep, lambda: bool(got), deadline_s=bus_run.limits.ack_wait_s + 5)
            waited = time.monotonic() - started
            assert got == [(item, 2)]
            assert waited >= bus_run.limits.ack_wait_s * 0.5
            await consumer.close()

    asyncio.run(main())


def test_a_message_that_keeps_failing_moves_to_the_dlq_and_leaves_the_work_stream(bus_run: BusRun) -> None:
    s = bus_run.subjects
    item = _by_type(s.run_id)[WorkItem]

    async def main() -> None:
        async with await bus_run.connect("admin") as admin, await bus_run.connect("actor") as actor:
            await admin.publish(s.work_shared, item)
            consumer = await actor.pull_consumer(s.work_stream, s.shared_work_consumer, WorkItem)

            async def fail(work: WorkItem, delivery: Delivery) -> None:
                raise RuntimeError("environment crashed")

            await _drain(consumer, fail, lambda: actor.counters.get("handler_errors", 0) >= bus_run.limits.max_deliver)
            await consumer.process_batch(fail, timeout=0.3)  # nothing left to deliver
            assert actor.counters["handler_errors"] == bus_run.limits.max_deliver
            await consumer.close()

            # The server's max-deliveries advisory can take seconds to arrive on a loaded machine.
            moved = 0
            deadline = time.monotonic() + 30
            while not moved and time.monotonic() < deadline:
                moved += await sweep_dead_letters(admin.js, s, wait_s=0.2)
            assert moved == 1
            info = await admin.js.stream_info(s.work_stream)
            assert info.state.messages == 0
            [letter] = await _dead_letters(admin, bus_run)
            assert (letter.data or b"") == encode(item)
            assert letter.headers[deadletter.REASON] == deadletter.MAX_DELIVERIES
            assert letter.headers[deadletter.SOURCE_STREAM] == s.work_stream

    asyncio.run(main())


def test_each_actor_pulls_its_own_work_subject(bus_run: BusRun) -> None:
    s = bus_run.subjects
    item = _by_type(s.run_id)[WorkItem]

    async def main() -> None:
        async with await bus_run.connect("actor") as actor, await bus_run.connect("allocator") as allocator:
            durable = await actor.ensure_actor_consumer("a1", bus_run.limits)
            assert await actor.ensure_actor_consumer("a1", bus_run.limits) == durable  # idempotent
            await allocator.publish(s.work_for_actor("a2"), replace(item, work_id="for-a2"))
            await allocator.publish(s.work_for_actor("a1"), replace(item, work_id="for-a1"))
            consumer = await actor.pull_consumer(s.work_stream, durable, WorkItem)
            got: list[str] = []

            async def keep(work: WorkItem, delivery: Delivery) -> None:
                await delivery.in_progress()
                got.append(work.work_id)

            await _drain(consumer, keep, lambda: bool(got))
            # An empty fetch returns 0 whichever timeout nats-py raises inside; a deadline spent
            # before the lingering pull (tiny timeout, or a busy loop) raises asyncio's own.
            for timeout in (0.2, 0.001, 0.0001):
                assert await consumer.process_batch(keep, timeout=timeout) == 0
            assert got == ["for-a1"]
            assert actor.counters.get("fetch_errors", 0) == 0
            await consumer.close()

    asyncio.run(main())


def test_pipelined_publish_acks_every_message_or_fails_the_batch(bus_run: BusRun) -> None:
    s = bus_run.subjects
    nodes = [realistic_turn_node(s.run_id, i, action_tokens=20, observation_tokens=5) for i in range(50)]
    batch = [(s.nodes_from("actor-0"), n) for n in nodes]
    ids = [n.node_id for n in nodes]
    quick = replace(bus_run.bus, request_timeout_s=0.5)

    async def main() -> None:
        # A window much smaller than the batch.
        async with (
            await BusClient.connect("actor", quick, bus_run.run, max_inflight_publishes=8) as actor,
            await bus_run.connect("admin") as admin,
        ):
            acks = await actor.publish_batch(batch, msg_ids=ids)
            assert [a.seq for a in acks] == list(range(1, 51)) and not any(a.duplicate for a in acks)
            # A resent batch (say its acks were lost) is stored once: every ack is a duplicate.
            again = await actor.publish_batch(batch, msg_ids=ids)
            assert all(a.duplicate for a in again)

            # No stream listens: the server's no-responders status fails the batch at once.
            started = time.monotonic()
            with pytest.raises(PublishError) as err:
                await admin.publish_batch([(f"{s.prefix}.nowhere", nodes[0])] * 2)
            assert err.value.unacked == 2 and "NoStreamResponse" in str(err.value)
            # Well before the 5 s ack timeout that a dropped publish waits for.
            assert time.monotonic() - started < 2.5

            # A denied publish is never acked: the batch fails after the ack timeout, even
            # with more messages than the window, and leaves the window free.
            with pytest.raises(PublishError) as err:
                await actor.publish_batch([(s.work_shared, nodes[0])] * 20)
            assert err.value.unacked == 8 and "no ack" in str(err.value)
            assert actor.counters["publish_failed"] == 8
            assert (await actor.publish_batch([(s.nodes_from("actor-0"), nodes[0])], msg_ids=["after"]))[0].seq == 51
            assert actor.counters["published"] == 101

    asyncio.run(main())


def test_batched_publish_and_weights_watch(bus_run: BusRun) -> None:
    s = bus_run.subjects
    nodes = [realistic_turn_node(s.run_id, i) for i in range(300)]
    first = _by_type(s.run_id)[WeightsAnnouncement]

    async def main() -> None:
        async with await bus_run.connect("actor") as actor, await bus_run.connect("learner") as learner:
            acks = await actor.publish_batch(
                [(s.nodes_from("actor-0"), n) for n in nodes], msg_ids=[n.node_id for n in nodes]
            )
            assert [a.seq for a in acks] == list(range(1, 301))
            duplicate = await actor.publish(s.nodes_from("actor-0"), nodes[0], msg_id=nodes[0].node_id)
            assert duplicate.duplicate

            weights = bytes(range(256)) * 12_000  # 3 MB: several 1 MiB chunks
            await learner.put_object("policy-4", weights)
            assert await actor.get_object("policy-4") == weights

            await learner.announce_weights(first)
            seen: list[int] = []

            async def watch() -> None:
                async for announcement in actor.watch_weights():
                    seen.append(announcement.policy_version)
                    if len(seen) == 2:
                        return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            await learner.announce_weights(replace(first, policy_version=4, object_name="policy-4"))
            await asyncio.wait_for(watcher, timeout=5.0)
            assert seen == [first.policy_version, 4]

            # The watch ends on its stop event, between announcements, without a cancellation.
            stop = asyncio.Event()
            after_stop: list[int] = []

            async def watch_until_stop() -> None:
                async for announcement in actor.watch_weights(stop):
                    after_stop.append(announcement.policy_version)

            stopping = asyncio.create_task(watch_until_stop())
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(stopping, timeout=2.0)
            assert after_stop == [4]

    asyncio.run(main())
