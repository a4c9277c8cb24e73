"""The actor with ``weights.transport: broadcast`` against a real nats-server and a real gloo
group: versions reach it by broadcast alone (the learner's sender here neither stores nor
announces them, and the actor's object-store reads fail), are verified against the
broadcast announcement before the engine reloads them, and a version whose bytes do not
match its announcement is refused and counted, the actor serving its version until the next
good one. The engine is the test double that reads the weights file it is handed; the rest
(receiver, verification, version directory) is the actor's own code."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from actors.config import ActorConfig
from actors.service import ActorService
from learner.weights_retention import weights_announcement
from protocol import replace
from tests.actors.doubles import CountingEnvironment, ReloadingEngine
from tests.actors.test_weights_fetch_nats import until, weights_blob
from tracerl.config import WeightsConfig
from weightsync.transport import BroadcastPublisher, make_publisher

pytestmark = [pytest.mark.nats, pytest.mark.timeout(300)]

WEIGHTS = WeightsConfig(transport="broadcast", bucket_mib=1, join_timeout_s=30.0, poll_interval_s=0.2)


class NoObjectReads:
    """The actor's real bus client, except that every object-store read fails."""

    def __init__(self, bus) -> None:
        self._bus = bus
        self.reads = 0

    def __getattr__(self, name: str):
        return getattr(self._bus, name)

    async def get_object(self, name: str) -> bytes:
        self.reads += 1
        raise ConnectionError(f"no object reads in this test ({name})")


def test_the_actor_loads_broadcast_versions_and_refuses_one_that_fails_its_checksum(
    bus_run, random_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    run_id = bus_run.run.run_id
    engine = ReloadingEngine(AutoTokenizer.from_pretrained(random_model_dir))
    blobs = {v: weights_blob(random_model_dir, v) for v in (1, 2, 3)}
    sha = {v: hashlib.sha256(b).hexdigest() for v, b in blobs.items()}

    async def main() -> ActorService:
        learner = await bus_run.connect("learner")
        actor_bus = await bus_run.connect("actor")
        bus = NoObjectReads(actor_bus)
        config = ActorConfig(
            run=replace(bus_run.run, run_dir=str(tmp_path / "run")),
            bus=bus_run.bus,
            model_dir=str(random_model_dir),
            actor_id="bcast",
            heartbeat_interval_s=0.2,
            metrics_interval_s=60.0,
            weights_dir=str(tmp_path / "weights"),
            weights=WEIGHTS,
        )
        service = ActorService(config, engine, bus, "bcast", make_env=lambda _name: CountingEnvironment())
        serving = asyncio.create_task(service.serve())
        publisher = make_publisher(learner, WEIGHTS, run_id, actor_timeout_s=60.0)
        assert isinstance(publisher, BroadcastPublisher)
        await publisher.start()
        try:
            deadline = time.monotonic() + 30
            while "bcast" not in await learner.get_broadcast_joins():
                assert time.monotonic() < deadline, "the actor never asked to join"
                await asyncio.sleep(0.1)

            sender = publisher.sender
            assert await sender.send(blobs[1], weights_announcement(run_id, 1, blobs[1], time.time())) == ("bcast",)
            await until(lambda: engine.policy_version == 1, 30, "version 1 by broadcast")

            # Version 2's bytes, damaged in flight: announced with the sha256 of the good ones.
            damaged = blobs[2][:-1] + bytes([blobs[2][-1] ^ 0xFF])
            assert await sender.send(damaged, weights_announcement(run_id, 2, blobs[2], time.time())) == ("bcast",)
            await until(lambda: service.weights_failures["sha256_mismatch"] == 1, 30, "the damaged version refused")
            assert engine.policy_version == 1

            assert await sender.send(blobs[3], weights_announcement(run_id, 3, blobs[3], time.time())) == ("bcast",)
            await until(lambda: engine.policy_version == 3, 30, "version 3 by broadcast")
            assert sender.epoch == 1  # one member throughout: one epoch
        finally:
            service.stop.set()
            exit_code = await asyncio.wait_for(serving, 30)
            await publisher.close()
            await learner.close()
            await actor_bus.close()
        assert exit_code == 0
        assert bus.reads == 0
        return service

    service = asyncio.run(main())
    assert engine.loaded == [(1, sha[1]), (3, sha[3])]
    assert service.weights_loaded == 2 and dict(service.weights_failures) == {"sha256_mismatch": 1}
    assert service.broadcast is not None and service.broadcast.counts["versions_received"] == 3
