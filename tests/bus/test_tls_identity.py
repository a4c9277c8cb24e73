"""The encrypted, per-identity bus against a real nats-server: TLS from the run's own CA, one
credential per actor, `tracerl bus add-actor` on a running server, and the allocator's drop
of a node that claims another actor."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from allocator.config import AllocatorConfig, TaskPoolConfig
from allocator.core import AllocatorCoreConfig
from allocator.heldout import HeldoutConfig
from allocator.service import AllocatorService
from bench.chaos import read_drop_records
from bus import tls
from bus.client import BusClient, Delivery
from bus.config import BusServerConfig
from bus.permissions import ACTOR_MISMATCH
from bus.provision import provision_run
from bus.server import BusServer, BusServerError, RoleCredentials, credentials_path
from protocol import Heartbeat, Subjects, TurnNode, encode
from protocol.messages import replace
from tests.heartbeats import idle_heartbeat
from tests.protocol.strategies import realistic_turn_node
from tracerl.config import BusConfig, LogConfig, RunConfig

pytestmark = pytest.mark.nats

RUN_ID = "sec"
TRACERL = str(Path(sys.executable).parent / "tracerl")


def _bus_config(run_dir: Path, **overrides) -> BusServerConfig:
    return BusServerConfig(
        run=RunConfig(run_id=RUN_ID, run_dir=str(run_dir)),
        log=LogConfig(level="warning", json_file=False),
        port=0,
        monitor_port=0,
        **overrides,
    )


@pytest.fixture
def secure_bus(tmp_path: Path) -> Iterator[BusServer]:
    """TLS and per-actor credentials (as beyond loopback), on loopback; actor a1 known at start."""
    server = BusServer(_bus_config(tmp_path / "run", tls=True, shared_actor_credential=False, actors=["a1"]))
    server.start()
    try:

        async def provision() -> None:
            async with await _connect(server, "admin") as admin:
                await provision_run(admin.js, admin.subjects, server.config.stream_limits)

        asyncio.run(provision())
        yield server
    finally:
        server.stop()


def _client_bus() -> BusConfig:
    # Empty servers: the credentials file's list, as a role on another host would use.
    return BusConfig(servers=[], connect_timeout_s=2.0, max_reconnect_attempts=1, request_timeout_s=2.0)


async def _connect(server: BusServer, role: str, actor_id: str = "") -> BusClient:
    return await BusClient.connect(role, _client_bus(), server.config.run, actor_id=actor_id)


def _node(actor_id: str, index: int) -> TurnNode:
    node = realistic_turn_node(RUN_ID, index)
    return replace(node, actor_id=actor_id, node_id=f"{actor_id}-{node.node_id}")


def _connz(server: BusServer) -> list[dict]:
    with urllib.request.urlopen(f"{server.monitor_url}/connz?limit=1000", timeout=2.0) as resp:
        return json.loads(resp.read())["connections"]


def test_a_round_trip_over_tls_verified_against_the_runs_ca(secure_bus: BusServer) -> None:
    s = Subjects(RUN_ID)
    actor_file = RoleCredentials.read(credentials_path(secure_bus.config.run.run_dir, "actor", "a1"))
    assert actor_file.servers == [f"tls://127.0.0.1:{secure_bus.port}"]
    assert actor_file.ca_pem == secure_bus.ca_pem and "BEGIN CERTIFICATE" in actor_file.ca_pem
    assert not credentials_path(secure_bus.config.run.run_dir, "actor").exists()  # no shared actor credential

    async def main() -> None:
        async with (
            await _connect(secure_bus, "actor", "a1") as actor,
            await _connect(secure_bus, "allocator") as allocator,
        ):
            sent = _node("a1", 0)
            await actor.publish(s.nodes_from("a1"), sent, msg_id=sent.node_id)
            consumer = await allocator.pull_consumer(s.nodes_stream, s.allocator_consumer, TurnNode)
            got: list[tuple[str, TurnNode]] = []

            async def keep(node: TurnNode, delivery: Delivery) -> None:
                got.append((delivery.subject, node))

            while not got:
                await consumer.process_batch(keep, batch=1, timeout=1.0)
            await consumer.close()
            assert got == [(s.nodes_from("a1"), sent)]
            names = {c.get("name"): c for c in _connz(secure_bus)}
            for name in (f"tracerl-actor-{RUN_ID}", f"tracerl-allocator-{RUN_ID}"):
                assert names[name]["tls_version"].startswith("1.")

    asyncio.run(main())


def test_a_client_without_the_runs_ca_is_refused(secure_bus: BusServer, tmp_path: Path) -> None:
    run_dir = secure_bus.config.run.run_dir
    good = RoleCredentials.read(credentials_path(run_dir, "actor", "a1"))
    other_ca = tls.generate_ca("another-run", datetime.datetime.now(datetime.UTC))

    async def attempt(credentials: RoleCredentials) -> str:
        try:
            client = await BusClient.connect(
                "actor", _client_bus(), secure_bus.config.run, credentials=credentials, allow_reconnect=False
            )
        except (nats.errors.Error, OSError, ssl.SSLError) as err:
            return repr(err)
        await client.close()
        return ""

    async def main() -> None:
        # Right password, but trusting the system's CAs, or another run's CA: the handshake fails.
        for ca_pem in ("", other_ca.cert_pem):
            refused = await attempt(replace(good, ca_pem=ca_pem))
            assert "CERTIFICATE_VERIFY_FAILED" in refused or "certificate verify failed" in refused, refused
        # Without TLS at all nothing gets through either (the server requires it).
        try:
            plain = await nats.connect(
                servers=[f"nats://127.0.0.1:{secure_bus.port}"],
                user=good.user,
                password=good.password,
                allow_reconnect=False,
                connect_timeout=2.0,
            )
        except (nats.errors.Error, OSError, ssl.SSLError):
            pass
        else:
            await plain.close()
            raise AssertionError("a client with the system's CAs only connected to the run's bus")
        # The same file with the run's CA connects.
        assert await attempt(good) == ""

    asyncio.run(main())


def test_an_actor_may_publish_pull_and_register_only_as_itself(secure_bus: BusServer) -> None:
    s = Subjects(RUN_ID)
    secure_bus.add_actor("a2")

    async def refused(client: BusClient, operation) -> None:
        before = client.counters.get("permission_violations", 0)
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await operation
        for _ in range(50):  # the violation arrives on the error callback, just after
            if client.counters.get("permission_violations", 0) > before:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permission violation reported; last error {client.last_error!r}")

    async def main() -> None:
        async with await _connect(secure_bus, "actor", "a1") as a1:
            assert a1.actor_id == "a1"
            # Its own subjects work.
            await a1.publish(s.nodes_from("a1"), _node("a1", 1), msg_id="own")
            await a1.publish(s.nodes_from("a1", 1), _node("a1", 3), msg_id="own-shard1")  # allocator shard 1's
            assert await a1.ensure_actor_consumer("a1", secure_bus.config.streams) == "actor_a1"
            beat = Heartbeat(
                run_id=RUN_ID,
                actor_id="a1",
                policy_version=0,
                inflight=0,
                capacity=1,
                tokens_generated=0,
                turns_generated=0,
                started_at=0.0,
                sent_at=0.0,
            )
            await a1.put_actor(beat)
            await a1.pull_consumer(s.work_stream, s.shared_work_consumer, TurnNode)
            # Another actor's: refused by the server.
            await refused(a1, a1.publish(s.nodes_from("a2"), _node("a2", 2), timeout=1.0))
            await refused(a1, a1.publish(s.nodes_from("a2", 1), _node("a2", 4), timeout=1.0))
            await refused(a1, a1.ensure_actor_consumer("a2", secure_bus.config.streams))
            await refused(a1, a1.put_actor(replace(beat, actor_id="a2")))
            await refused(a1, a1.js.consumer_info(s.work_stream, s.actor_work_consumer("a2"), timeout=1.0))
        with pytest.raises(ValueError, match="a1"):
            await BusClient.connect(
                "actor",
                replace(_client_bus(), credentials=str(credentials_path(secure_bus.config.run.run_dir, "actor", "a1"))),
                secure_bus.config.run,
                actor_id="a2",
            )

    asyncio.run(main())


def test_add_actor_gives_a_running_bus_a_new_identity_without_a_restart(secure_bus: BusServer) -> None:
    s = Subjects(RUN_ID)
    run_dir = secure_bus.config.run.run_dir
    pid = secure_bus.pid

    async def main() -> None:
        async with await _connect(secure_bus, "actor", "a1") as a1:
            with pytest.raises(FileNotFoundError):
                credentials_path(run_dir, "actor", "a3").read_text()
            # The command as an operator runs it, from another process, with the bus's config.
            added = subprocess.run(
                [
                    TRACERL,
                    "bus",
                    "add-actor",
                    "a3",
                    "--set",
                    f"run.run_dir={run_dir}",
                    "--set",
                    f"run.run_id={RUN_ID}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert added.returncode == 0, added.stderr
            assert str(credentials_path(run_dir, "actor", "a3")) in added.stdout
            async with await _connect(secure_bus, "actor", "a3") as a3:
                await a3.publish(s.nodes_from("a3"), _node("a3", 3), msg_id="a3-first")
                with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
                    await a3.publish(s.nodes_from("a1"), _node("a1", 4), timeout=1.0)
            # The connection made before the reload is still served, still only as itself.
            await a1.publish(s.nodes_from("a1"), _node("a1", 5), msg_id="a1-after")
            assert a1.counters.get("disconnects", 0) == 0
        # Adding it again keeps its password (copies on other cluster nodes stay valid).
        first = RoleCredentials.read(credentials_path(run_dir, "actor", "a3"))
        secure_bus.add_actor("a3")
        assert RoleCredentials.read(credentials_path(run_dir, "actor", "a3")).password == first.password

    asyncio.run(main())
    assert secure_bus.pid == pid and secure_bus._processes[secure_bus.nodes[0].file_stem].poll() is None


def test_add_actor_needs_a_running_bus(tmp_path: Path) -> None:
    from bus.server import add_actor_to_running_bus

    with pytest.raises(BusServerError, match="no nats-server config"):
        add_actor_to_running_bus(_bus_config(tmp_path), "a1")


def test_the_allocator_drops_and_counts_a_node_claiming_another_actor(secure_bus: BusServer, tmp_path: Path) -> None:
    """With a shared actor credential any actor may publish on any actor's subject; the
    allocator still keeps every node to the actor its subject names."""
    s = Subjects(RUN_ID)
    run = RunConfig(run_id=RUN_ID, run_dir=str(tmp_path / "allocator"))
    config = AllocatorConfig(
        run=run,
        bus=_client_bus(),
        core=AllocatorCoreConfig(strategy="grpo", batch_prompts=2, group_size=2, step_budget_turns=8, max_turns=2),
        tasks=TaskPoolConfig(env="multihop", train_tasks=8),
        heldout=HeldoutConfig(every_versions=0),
    )

    async def main() -> None:
        async with (
            await _connect(secure_bus, "actor", "a1") as a1,
            await _connect(secure_bus, "allocator") as allocator,
        ):
            impostor = _node("a2", 6)  # claims a2, sent by a1 on its own subject
            genuine = _node("a1", 7)
            await a1.publish(s.nodes_from("a1"), impostor, msg_id=impostor.node_id)
            await a1.publish(s.nodes_from("a1"), genuine, msg_id=genuine.node_id)
            service = AllocatorService(config, allocator)
            consumer = await allocator.pull_consumer(s.nodes_stream, s.allocator_consumer, TurnNode)
            handled = 0
            while handled < 2:
                handled += await consumer.process_batch(service.on_node, batch=2, timeout=1.0)
            await consumer.close()
            assert allocator.counters[f"rejected.{ACTOR_MISMATCH}"] == 1
            assert service.nodes_dropped >= 1
            mismatched = [r for r in read_drop_records(Path(run.run_dir)) if r.reason == ACTOR_MISMATCH]
            assert [r.node_ids for r in mismatched] == [(impostor.node_id,)]
            service.drops.close()
            service.metrics.close()

    asyncio.run(main())


def test_a_heartbeat_under_an_actors_own_key_naming_another_actor_is_not_registered(secure_bus: BusServer) -> None:
    def beat(actor_id: str) -> Heartbeat:
        return idle_heartbeat(RUN_ID, actor_id, 0.0, capacity=4)

    async def main() -> None:
        secure_bus.add_actor("a2")
        async with (
            await _connect(secure_bus, "actor", "a1") as a1,
            await _connect(secure_bus, "actor", "a2") as a2,
            await _connect(secure_bus, "allocator") as allocator,
        ):
            await a2.put_actor(beat("a2"))
            kv = await a1.js.key_value(a1.subjects.state_bucket)
            await kv.put(Subjects.actor_key("a1"), encode(beat("a2")))  # a1's own key, claiming a2
            actors = await allocator.get_actors()
            assert set(actors) == {"a2"} and actors["a2"].capacity == 4
            assert allocator.counters[f"rejected.{ACTOR_MISMATCH}"] == 1

    asyncio.run(main())


def test_a_restarted_bus_keeps_its_ca_and_its_actors(tmp_path: Path) -> None:
    config = _bus_config(tmp_path / "run", tls=True, shared_actor_credential=False, actors=["a1"])
    with BusServer(config) as first:
        first.add_actor("a2")
        before = {a: RoleCredentials.read(credentials_path(config.run.run_dir, "actor", a)) for a in ("a1", "a2")}
        ca = first.ca_pem
    second = BusServer(config)
    with second:
        assert second.ca_pem == ca and set(second.actor_credentials()) == {"a1", "a2"}
        for actor_id, earlier in before.items():
            now = RoleCredentials.read(credentials_path(config.run.run_dir, "actor", actor_id))
            assert now.password == earlier.password and now.servers == second.urls and now.ca_pem == ca

            async def connect_as(actor_id: str = actor_id) -> None:
                async with await _connect(second, "actor", actor_id) as client:
                    assert client.nc.is_connected

            asyncio.run(connect_as())
