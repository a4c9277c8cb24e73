"""A three-node bus on loopback: replicated provisioning, and a run that survives losing a node.

The failover test kills (SIGKILL) the node that both the publishing actor is connected to
and the NODES stream's leader sits on, the worst single failure for the publisher: its
connection drops and the stream must elect a new leader before it acks again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
import pytest

from bus.client import BusClient, Delivery
from bus.config import StreamLimits
from bus.entry import provision_runs
from bus.permissions import kv_stream, object_stream
from bus.server import BusServer, RoleCredentials
from protocol import TurnNode
from protocol.subjects import Subjects
from tests.protocol.strategies import realistic_turn_node
from tracerl.config import BusConfig, RunConfig

pytestmark = pytest.mark.nats

RUN_ID = "cluster"
# Nodes acked before the kill, and after it: the run must keep going, not just recover once.
PRE_KILL_NODES = 200
POST_KILL_NODES = 200


@pytest.fixture
def bus_limits() -> StreamLimits:
    # Room for the redeliveries that acks lost with a killed node cause.
    return StreamLimits(ack_wait_s=2.0, max_deliver=20)


def client_config(server: BusServer) -> BusConfig:
    # Every node listed, short waits: a client must move to a live node within a second or so.
    return BusConfig(
        servers=server.urls,
        connect_timeout_s=2.0,
        max_reconnect_attempts=30,
        reconnect_wait_s=0.2,
        request_timeout_s=2.0,
    )


async def connect(server: BusServer, role: str) -> BusClient:
    run = RunConfig(run_id=RUN_ID, run_dir=server.config.run.run_dir)
    return await BusClient.connect(role, client_config(server), run)


def node_of(server: BusServer, client: BusClient) -> str:
    assert client.nc is not None and client.nc.connected_url is not None
    port = client.nc.connected_url.port
    return next(node.name for node in server.nodes if node.port == port)


async def stream_leader(admin: BusClient, stream: str) -> str:
    info = await admin.js.stream_info(stream)
    assert info.cluster is not None
    return info.cluster.leader or ""


async def move_stream_leader(admin: BusClient, stream: str, to: str) -> None:
    """Ask the current leader to step down in favour of ``to``; plain step-downs elect at random."""
    deadline = time.monotonic() + 20
    while (leader := await stream_leader(admin, stream)) != to:
        assert time.monotonic() < deadline, f"leader of {stream} stayed on {leader}, wanted {to}"
        assert admin.nc is not None
        await admin.nc.request(
            f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", json.dumps({"placement": {"preferred": to}}).encode(), timeout=5
        )
        await asyncio.sleep(0.5)


def test_cluster_provisions_every_stream_and_bucket_with_three_replicas(nats_cluster: BusServer) -> None:
    s = Subjects(RUN_ID)
    assert nats_cluster.config.replicas == 3
    assert len(set(nats_cluster.pids.values())) == 3 and len(set(nats_cluster.urls)) == 3

    async def main() -> None:
        async with await connect(nats_cluster, "admin") as admin:
            await provision_runs(admin, nats_cluster.config, [RUN_ID])
            names = [
                s.nodes_stream,
                s.work_stream,
                s.trees_stream,
                s.dead_letter_stream,
                kv_stream(s.state_bucket),
                object_stream(s.weights_bucket),
            ]
            for name in names:
                info = await admin.js.stream_info(name)
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None and info.cluster.leader
                assert len(info.cluster.replicas or []) == 2, name
            consumer = await admin.js.consumer_info(s.nodes_stream, s.allocator_consumer)
            assert consumer.cluster is not None and len(consumer.cluster.replicas or []) == 2
        # The same users on every node: each role may log in anywhere.
        for url in nats_cluster.urls:
            run = RunConfig(run_id=RUN_ID, run_dir=nats_cluster.config.run.run_dir)
            async with await BusClient.connect("learner", BusConfig(servers=[url], max_reconnect_attempts=1), run) as c:
                assert c.nc is not None and c.nc.connected_url.port == int(url.rsplit(":", 1)[1])
                await c.put_object("probe", b"x" * 2048)

    asyncio.run(main())
    configs = [
        json.loads((Path(nats_cluster.config.run.run_dir) / f"{n.file_stem}.conf").read_text())
        for n in nats_cluster.nodes
    ]
    assert len({json.dumps(c["authorization"], sort_keys=True) for c in configs}) == 1
    assert len({c["jetstream"]["store_dir"] for c in configs}) == 3
    assert len({c["server_name"] for c in configs}) == 3


@dataclass
class Timeline:
    acked: dict[str, float] = field(default_factory=dict)  # node id -> first ack time
    ack_times: list[float] = field(default_factory=list)
    publish_errors: int = 0
    consumed: list[tuple[str, float]] = field(default_factory=list)


async def publish_until(actor: BusClient, done: Callable[[], bool], timeline: Timeline) -> None:
    """Publish distinct TurnNodes, retrying each one (same id, so no duplicate) until acked."""
    index = 0
    while not done():
        node = realistic_turn_node(RUN_ID, index)
        while True:
            try:
                await actor.publish(actor.subjects.nodes_from(node.actor_id), node, msg_id=node.node_id, timeout=1.0)
                break
            except (TimeoutError, nats.errors.Error):
                timeline.publish_errors += 1
                await asyncio.sleep(0.05)
        now = time.monotonic()
        timeline.acked[node.node_id] = now
        timeline.ack_times.append(now)
        index += 1
        await asyncio.sleep(0.005)  # about 150 nodes/s: steady traffic, little CPU


def test_run_survives_killing_a_node_and_loses_nothing(nats_cluster: BusServer) -> None:
    s = Subjects(RUN_ID)
    timeline = Timeline()

    async def main() -> float:
        async with (
            await connect(nats_cluster, "admin") as admin,
            await connect(nats_cluster, "actor") as actor,
            await connect(nats_cluster, "allocator") as allocator,
        ):
            await provision_runs(admin, nats_cluster.config, [RUN_ID])
            victim = node_of(nats_cluster, actor)
            await move_stream_leader(admin, s.nodes_stream, victim)

            consumer = await allocator.pull_consumer(s.nodes_stream, s.allocator_consumer, TurnNode)
            stop_consuming = asyncio.Event()

            async def keep(node: TurnNode, delivery: Delivery) -> None:
                timeline.consumed.append((node.node_id, time.monotonic()))

            consuming = asyncio.create_task(consumer.run(keep, stop_consuming, batch=128, timeout=0.5))
            killed_at = float("inf")

            def enough_after_the_kill() -> bool:
                return sum(1 for t in timeline.ack_times if t >= killed_at) >= POST_KILL_NODES

            publishing = asyncio.create_task(publish_until(actor, enough_after_the_kill, timeline))
            while len(timeline.ack_times) < PRE_KILL_NODES:
                await asyncio.sleep(0.05)
            killed_at = time.monotonic()
            os.kill(nats_cluster.pids[victim], signal.SIGKILL)
            await asyncio.wait_for(publishing, timeout=45)

            deadline = time.monotonic() + 30
            while set(timeline.acked) - {node_id for node_id, _ in timeline.consumed}:
                assert time.monotonic() < deadline, "consumer did not catch up after the failover"
                await asyncio.sleep(0.2)
            stop_consuming.set()
            await consuming
            await consumer.close()
            assert node_of(nats_cluster, actor) != victim
            assert await stream_leader(admin, s.nodes_stream) != victim
            return killed_at

    killed_at = asyncio.run(main())
    before = [t for t in timeline.ack_times if t < killed_at]
    after = [t for t in timeline.ack_times if t >= killed_at]
    assert len(before) >= PRE_KILL_NODES and len(after) >= POST_KILL_NODES, (len(before), len(after))
    # Publish outage: from the last ack before the kill to the first ack after it.
    outage_s = after[0] - before[-1]
    consumed_ids = [node_id for node_id, _ in timeline.consumed]
    lost = set(timeline.acked) - set(consumed_ids)
    first_new_consumed = min(t for node_id, t in timeline.consumed if timeline.acked[node_id] >= killed_at)
    print(
        f"\ncluster failover: published={len(timeline.acked)} consumed={len(consumed_ids)} "
        f"unique={len(set(consumed_ids))} duplicates={len(consumed_ids) - len(set(consumed_ids))} lost={len(lost)} "
        f"publish_errors={timeline.publish_errors} publish_outage_s={outage_s:.2f} "
        f"first_post_kill_node_consumed_after_s={first_new_consumed - killed_at:.2f}"
    )
    assert not lost
    assert outage_s < 15.0


def test_tracerl_bus_starts_a_local_three_node_cluster_and_stops_all_of_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tracerl"),
            "bus",
            *(
                arg
                for setting in (
                    f"run.run_dir={run_dir}",
                    "run.run_id=dev",
                    "port=0",
                    "monitor_port=0",
                    "cluster.name=dev",
                    "cluster.local_nodes=3",
                    "cluster.route_port=0",
                    "log.level=warning",
                    "log.json_file=false",
                )
                for arg in ("--set", setting)
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 40
        while not any("learner" in line and "credentials" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        text = "".join(lines)
        assert "cluster 'dev' serving as dev-n0, dev-n1, dev-n2, replicas=3" in text
        urls = next(line for line in lines if "listening on" in line).split(" on ", 1)[1].split(" (")[0].split(", ")
        assert len(urls) == 3
        assert RoleCredentials.read(run_dir / "credentials" / "actor.json").servers == urls
        pids = [int((run_dir / f"nats-server-dev-n{i}.pid").read_text()) for i in range(3)]

        async def nodes_stream_replicas() -> int:
            run = RunConfig(run_id="dev", run_dir=str(run_dir))
            async with await BusClient.connect(
                "admin", BusConfig(servers=urls[2:], max_reconnect_attempts=1), run
            ) as admin:
                info = await admin.js.stream_info(Subjects("dev").nodes_stream)
                return info.config.num_replicas

        assert asyncio.run(nodes_stream_replicas()) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not [pid for pid in pids if _alive(pid)], "a cluster node outlived `tracerl bus`"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
