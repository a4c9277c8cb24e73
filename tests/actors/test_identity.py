"""Which id an actor runs as when it has a credential of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from actors.config import ActorConfig
from actors.service import ActorService, identity
from bus.client import BusClient, Delivery
from bus.config import BusServerConfig, StreamLimits
from bus.provision import provision_run
from bus.server import BusServer, actor_credentials, credentials_path, generate_credentials
from protocol import Subjects, TurnNode, replace
from tests.actors.doubles import CountingEnvironment, ReloadingEngine, make_item
from tracerl.config import BusConfig, LogConfig, RunConfig


def test_an_actor_takes_its_id_from_its_own_credentials_file(tmp_path: Path) -> None:
    own = tmp_path / "exp1-actor-a9.json"
    actor_credentials("a9", "pw", ["tls://10.0.0.1:4222"], "CA").write(own)
    config = ActorConfig(bus=BusConfig(credentials=str(own)))
    assert identity(config) == "a9"
    # A configured id is kept (and the client refuses a file of another actor's).
    assert identity(replace(config, actor_id="a1")) == "a1"
    # The shared credential names no actor: a fresh id, as without any file.
    shared = tmp_path / "actor.json"
    generate_credentials(["nats://127.0.0.1:4222"], lambda: "pw")["actor"].write(shared)
    fresh = identity(ActorConfig(bus=BusConfig(credentials=str(shared))))
    assert fresh.startswith("actor-") and fresh != identity(ActorConfig())


@pytest.mark.nats
def test_the_actor_serves_over_tls_with_only_its_own_credential(tmp_path: Path, random_model_dir: Path) -> None:
    """The actor's own code (pull loops, heartbeats, node publishing, stop) against a bus that
    serves TLS and gives this actor nothing beyond its own subjects: every operation it needs
    is allowed, its nodes arrive on its own subject, and not one permission is violated."""
    from transformers import AutoTokenizer

    bus_config = BusServerConfig(
        run=RunConfig(run_id="own", run_dir=str(tmp_path / "bus")),
        log=LogConfig(level="warning", json_file=False),
        port=0,
        monitor_port=0,
        tls=True,
        shared_actor_credential=False,
    )
    server = BusServer(bus_config).start()
    try:
        server.add_actor("a1")
        own_file = credentials_path(bus_config.run.run_dir, "actor", "a1")
        client_bus = BusConfig(servers=[], connect_timeout_s=2.0, max_reconnect_attempts=2, request_timeout_s=3.0)
        config = ActorConfig(
            run=RunConfig(run_id="own", run_dir=str(tmp_path / "actor")),
            bus=replace(client_bus, credentials=str(own_file)),
            model_dir=str(random_model_dir),
            heartbeat_interval_s=0.2,
            metrics_interval_s=60.0,
        )
        actor_id = identity(config)
        assert actor_id == "a1"
        engine = ReloadingEngine(AutoTokenizer.from_pretrained(random_model_dir))
        s = Subjects("own")

        async def main() -> None:
            async with await BusClient.connect("admin", client_bus, bus_config.run) as admin:
                await provision_run(admin.js, s, StreamLimits(ack_wait_s=5.0, max_deliver=3))
            allocator = await BusClient.connect("allocator", client_bus, bus_config.run)
            actor_bus = await BusClient.connect("actor", config.bus, config.run, actor_id=actor_id)
            service = ActorService(config, engine, actor_bus, actor_id, make_env=lambda _name: CountingEnvironment())
            serving = asyncio.create_task(service.serve())
            try:
                shared = make_item(run_id="own", work_id="shared", tree_id="t-shared", num_samples=1)
                routed = make_item(run_id="own", work_id="routed", tree_id="t-routed", num_samples=1)
                await allocator.publish(s.work_shared, shared)
                await allocator.publish(s.work_for_actor("a1"), routed)
                consumer = await allocator.pull_consumer(s.nodes_stream, s.allocator_consumer, TurnNode)
                finished: set[str] = set()
                subjects: set[str] = set()

                async def on_node(node: TurnNode, delivery: Delivery) -> None:
                    subjects.add(delivery.subject)
                    assert node.actor_id == "a1"
                    if node.done:
                        finished.add(node.work_id)

                deadline = time.monotonic() + 60
                while finished != {"shared", "routed"}:
                    assert time.monotonic() < deadline, finished
                    await consumer.process_batch(on_node, batch=50, timeout=0.2)
                await consumer.close()
                assert subjects == {s.nodes_from("a1")}
                assert set(await allocator.get_actors()) == {"a1"}
            finally:
                service.stop.set()
                exit_code = await asyncio.wait_for(serving, 30)
            assert exit_code == 0
            assert actor_bus.counters.get("permission_violations", 0) == 0, actor_bus.last_error
            assert await allocator.get_actors() == {}  # deregistered its own key at the stop
            await actor_bus.close()
            await allocator.close()

        asyncio.run(main())
    finally:
        server.stop()
