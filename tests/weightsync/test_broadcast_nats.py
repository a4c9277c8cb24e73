"""The weights broadcast against a real nats-server, with gloo between real processes.

The learner's side is ``make_publisher`` with ``weights.transport: broadcast`` (rank 0, the
TCP rendezvous, the object store behind it); the actors' side is ``BroadcastReceiver`` in
processes of their own, each verifying every blob with the actor's ``verify_blob`` against
the announcement the broadcast carried. Two actors get versions 1 and 2 by broadcast. A
late joiner, outside the group, gets version 2 from the object store with the actor's own
fetch (``fetch_verified``), then asks to join; version 3 then goes to all three in a new
epoch formed at that version boundary. Then an actor that asked to join and beats but never
checks in is left out: version 4 goes to the other three in the epoch formed again without
it, and version 5 in the same epoch (it is not tried again until it asks again).
"""

from __future__ import annotations

import asyncio
import faulthandler
import hashlib
import multiprocessing
import os
import queue
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

from actors.weights import TensorSignature, fetch_verified, safetensors_signature, verify_blob
from bus.client import BusClient
from learner.weights_retention import weights_announcement
from protocol import BroadcastJoin, WeightsAnnouncement
from tests.heartbeats import idle_heartbeat
from tracerl.config import BusConfig, RunConfig, WeightsConfig
from tracerl.logs import configure_logging
from weightsync.broadcast import BroadcastReceiver, end_role
from weightsync.transport import BroadcastPublisher, make_publisher

pytestmark = [pytest.mark.nats, pytest.mark.timeout(600)]

# Small buckets, so a version of about 3 MB is several of them.
# Joining means spawning a process, importing torch and meeting in gloo: generous for a loaded CI machine.
WEIGHTS = WeightsConfig(transport="broadcast", bucket_mib=1, join_timeout_s=60.0, poll_interval_s=0.2)
EVENT_TIMEOUT_S = 240.0


def version_blob(version: int) -> bytes:
    generator = torch.Generator().manual_seed(version)
    state = {
        "embed.weight": torch.randn(512, 640, generator=generator),
        "lm_head.weight": torch.randn(640, 512, generator=generator),
        "norm.weight": torch.randn(640, generator=generator).to(torch.bfloat16),
    }
    return save(state, metadata={"format": "pt"})


async def _beat(client: BusClient, run_id: str, actor_id: str) -> None:
    now = time.time()
    await client.put_actor(idle_heartbeat(run_id, actor_id, now, started_at=now))


def _actor_process(
    bus: BusConfig,
    run: RunConfig,
    actor_id: str,
    reference: TensorSignature,
    broadcasts_wanted: int,
    fetch_first: bool,
    events: Any,
    output_path: str,
) -> None:
    """One actor's weights path: optionally the object store first (a late joiner), then the broadcast."""
    # Into a file of its own, C++ included (gloo's aborts): pytest shows a child's output only in part.
    output = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    faulthandler.enable()

    async def main() -> None:
        client = await BusClient.connect("actor", bus, run)
        try:
            await _beat(client, run.run_id, actor_id)
            if fetch_first:
                current = await client.get_weights_announcement()
                assert current is not None
                blob = await fetch_verified(client.get_object, current, reference, 60.0)
                events.put(("object_store", actor_id, current.policy_version, hashlib.sha256(blob).hexdigest()))
            receiver = BroadcastReceiver(client, WEIGHTS, run.run_id, actor_id)
            stop = asyncio.Event()
            received = 0

            async def deliver(announcement: WeightsAnnouncement, blob: bytearray) -> None:
                nonlocal received
                verify_blob(blob, announcement, reference)  # what the actor does before loading
                received += 1
                digest = hashlib.sha256(blob).hexdigest()
                events.put(("broadcast", actor_id, announcement.policy_version, digest))
                if received >= broadcasts_wanted:
                    stop.set()

            await asyncio.wait_for(receiver.run(stop, deliver), EVENT_TIMEOUT_S * 2)
            await client.delete_broadcast_join(actor_id)
        finally:
            await client.close()

    configure_logging(f"actor-{actor_id}", None, "warning", json_file=False)
    try:
        asyncio.run(main())
    except BaseException as err:
        events.put(("failed", actor_id, -1, repr(err)))
        raise
    # As the actor role ends (actors.service.run): the events are flushed first.
    events.close()
    events.join_thread()
    end_role(0, WEIGHTS)


def _next_event(events: Any, deadline: float) -> tuple[str, str, int, str]:
    try:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        raise AssertionError("timed out waiting for an actor") from None
    assert event[0] != "failed", event
    return event


def _output_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no output)"


def test_two_actors_get_versions_by_broadcast_and_a_late_joiner_from_the_object_store(bus_run, tmp_path):
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    reference = safetensors_signature(version_blob(1))
    processes: list[Any] = []

    def start(actor_id: str, broadcasts: int, fetch_first: bool) -> None:
        output = str(tmp_path / f"{actor_id}.log")
        args = (bus_run.bus, bus_run.run, actor_id, reference, broadcasts, fetch_first, events, output)
        process = context.Process(target=_actor_process, args=args, name=actor_id)
        process.start()
        processes.append(process)

    async def until_asked(learner: BusClient, actor_ids: set[str]) -> None:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while not actor_ids <= set(await learner.get_broadcast_joins()):
            assert time.monotonic() < deadline, f"{actor_ids} never asked to join"
            await asyncio.sleep(0.2)

    async def main() -> None:
        learner = await bus_run.connect("learner")
        publisher = make_publisher(learner, WEIGHTS, bus_run.run.run_id, actor_timeout_s=600.0)
        assert isinstance(publisher, BroadcastPublisher)
        await publisher.start()
        sent: dict[int, WeightsAnnouncement] = {}

        async def publish(version: int) -> tuple[str, ...]:
            blob = version_blob(version)
            sent[version] = weights_announcement(bus_run.run.run_id, version, blob, time.time())
            await publisher.publish(blob, sent[version])
            return publisher.sender.members

        def expect(count: int) -> list[tuple[str, str, int, str]]:
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            return [_next_event(events, deadline) for _ in range(count)]

        try:
            start("actor-a", 5, fetch_first=False)
            start("actor-b", 5, fetch_first=False)
            await until_asked(learner, {"actor-a", "actor-b"})

            assert await publish(1) == ("actor-a", "actor-b")
            assert publisher.sender.epoch == 1
            assert await publish(2) == ("actor-a", "actor-b")  # same members: the same epoch
            assert publisher.sender.epoch == 1
            got = expect(4)
            assert sorted(e[1:] for e in got) == sorted(
                (actor, v, sent[v].sha256) for actor in ("actor-a", "actor-b") for v in (1, 2)
            )
            assert all(kind == "broadcast" for kind, *_ in got)
            # The object store and the KV hold every version too, announced as broadcast.
            assert await learner.get_weights_announcement() == sent[2]
            assert hashlib.sha256(await learner.get_object(sent[1].object_name)).hexdigest() == sent[1].sha256

            start("actor-late", 3, fetch_first=True)
            assert expect(1) == [("object_store", "actor-late", 2, sent[2].sha256)]
            await until_asked(learner, {"actor-late"})

            # The membership changed: a new epoch at this version boundary, with all three.
            assert await publish(3) == ("actor-a", "actor-b", "actor-late")
            assert publisher.sender.epoch == 2
            got = expect(3)
            assert sorted(e[1:] for e in got) == [
                ("actor-a", 3, sent[3].sha256),
                ("actor-b", 3, sent[3].sha256),
                ("actor-late", 3, sent[3].sha256),
            ]
            assert all(kind == "broadcast" for kind, *_ in got)

            # An actor that asks and beats, but whose receiver never checks in.
            async with await bus_run.connect("actor") as ghost:
                await _beat(ghost, bus_run.run.run_id, "actor-ghost")
                await ghost.put_broadcast_join(
                    BroadcastJoin(run_id=bus_run.run.run_id, actor_id="actor-ghost", sent_at=time.time())
                )
            assert await publish(4) == ("actor-a", "actor-b", "actor-late")
            assert publisher.sender.epoch == 4  # 3: with the ghost, abandoned; 4: without it
            assert publisher.sender.counts["members_left_out"] == 1
            assert await publish(5) == ("actor-a", "actor-b", "actor-late")
            assert publisher.sender.epoch == 4
            got = expect(6)
            assert sorted(e[1:] for e in got) == sorted(
                (actor, v, sent[v].sha256) for actor in ("actor-a", "actor-b", "actor-late") for v in (4, 5)
            )
            assert publisher.sender.counts["broadcast_failed"] == 0
        finally:
            await publisher.close()
            await learner.close()

    try:
        asyncio.run(main())
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0, (
                process.name,
                process.exitcode,
                _output_tail(tmp_path / f"{process.name}.log"),
            )
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
