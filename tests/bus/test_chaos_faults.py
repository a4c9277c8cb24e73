"""The chaos bench's bus faults against the real nats-server: a bus with ``max_store_mib`` refuses what
does not fit, the store filler fills it toward that limit and leaves nothing behind, and a cluster node
killed alone comes back on the config its bus wrote."""

from __future__ import annotations

import asyncio
import random
import urllib.request
from pathlib import Path

import nats.js.errors
import psutil
import pytest
from nats.js import api

from bench.chaos import ClusterNodes, StoreFiller, store_used
from bus.client import BusClient
from bus.config import BusServerConfig, StreamLimits
from bus.server import BusServer
from tracerl.config import BusConfig, LogConfig, RunConfig
from tracerl.supervisor import wait_for

pytestmark = pytest.mark.nats

MIB = 1024 * 1024


@pytest.fixture
def limited_bus(tmp_path):
    config = BusServerConfig(
        run=RunConfig(run_id="limited", run_dir=str(tmp_path)),
        log=LogConfig(level="warning", json_file=False),
        port=0,
        monitor_port=0,
        max_store_mib=4,
        # Uncapped streams reserve nothing from the 4 MiB limit.
        streams=StreamLimits(nodes_max_bytes=0, trees_max_bytes=0, dead_letter_max_bytes=0),
    )
    server = BusServer(config).start()
    try:
        yield server
    finally:
        server.stop()


def _connect(server: BusServer):
    return BusClient.connect(
        "admin",
        BusConfig(servers=server.urls),
        RunConfig(run_id="limited", run_dir=server.config.run.run_dir),
        credentials=server.credentials["admin"],
    )


def test_the_store_refuses_publishes_past_its_limit(limited_bus):
    async def main() -> int:
        admin = await _connect(limited_bus)
        try:
            await admin.js.add_stream(name="BIG", subjects=["big"], storage=api.StorageType.FILE)
            stored = 0
            with pytest.raises(nats.js.errors.APIError):
                for _ in range(64):  # 16 MiB: four times the limit
                    await admin.js.publish("big", b"x" * (MIB // 4), stream="BIG")
                    stored += MIB // 4
            return stored
        finally:
            await admin.close()

    stored = asyncio.run(main())
    assert 2 * MIB <= stored <= 4 * MIB
    # The message that crosses the limit is the last one stored.
    assert store_used([limited_bus.monitor_port]) <= 4 * MIB + MIB // 4


def test_the_filler_fills_toward_the_limit_then_deletes_its_stream(limited_bus):
    filler = StoreFiller(
        run_dir=limited_bus.config.run.run_dir,
        run_id="limited",
        servers=limited_bus.urls,
        monitor_ports=[limited_bus.monitor_port],
        replicas=1,
        target_bytes=3 * MIB,
        hold_s=0.5,
    )
    filler.start()
    filler.join(60.0)
    assert not filler.is_alive() and filler.error == ""
    assert 3 * MIB <= filler.peak_used <= 4 * MIB and filler.filled_bytes >= 3 * MIB - MIB // 2
    assert filler.deleted and "NOT deleted" not in filler.detail()

    async def streams() -> list[str]:
        admin = await _connect(limited_bus)
        try:
            return [s.config.name for s in await admin.js.streams_info()]
        finally:
            await admin.close()

    assert filler.stream not in asyncio.run(streams())
    assert store_used([limited_bus.monitor_port]) < MIB


def test_a_cluster_node_killed_alone_comes_back_on_its_own_config(nats_cluster):
    nodes = ClusterNodes(Path(nats_cluster.config.run.run_dir), nats_cluster.config)
    pids = dict(nats_cluster.pids)
    stem = nodes.kill(random.Random(0))
    plan = next(node for node in nats_cluster.nodes if node.file_stem == stem)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: gone(pids[plan.name]), 10.0, what="the killed node to exit")
    assert nodes.start_again(stem) and not nodes.start_again(stem)  # started once; no longer down

    def serving() -> bool:
        try:
            url = f"http://127.0.0.1:{plan.monitor_port}/healthz?js-server-only=true"
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(serving, 20.0, what="the node started again")
    nats_cluster.wait_jetstream_ready(3, 30.0)  # three JetStream peers again
    restarted = nodes.restarted[stem]
    nodes.stop_restarted()
    assert restarted.poll() is not None and nodes.restarted == {}
