"""`tracerl bus` as a process: start, announce, serve a role, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.client import BusClient
from bus.server import RoleCredentials
from protocol import TurnNode
from tests.protocol.strategies import realistic_turn_node
from tracerl.config import BusConfig, RunConfig

pytestmark = pytest.mark.nats

LAUNCH = (
    "import sys; from bus.config import BusServerConfig; from bus.entry import run; "
    "from tracerl.config import load_config; sys.exit(run(load_config(BusServerConfig, None, sys.argv[1:])))"
)


def test_bus_entry_provisions_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            f"run.run_dir={run_dir}",
            "run.run_id=e2e",
            "port=0",
            "monitor_port=0",
            "log.level=warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        lines = []
        deadline = time.monotonic() + 20
        while not any("learner" in line and "credentials" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())
        url = next(line for line in lines if "listening on" in line).split()[4]
        actor_file = run_dir / "credentials" / "actor.json"
        assert f"credentials: {actor_file}" in "".join(lines)
        assert (os.stat(actor_file).st_mode & 0o777) == 0o600
        assert RoleCredentials.read(actor_file).servers == [url]
        server_pid = _nats_server_pid(run_dir)

        async def use_bus() -> None:
            run = RunConfig(run_id="e2e", run_dir=str(run_dir))
            async with await BusClient.connect(
                "actor", BusConfig(servers=[url], max_reconnect_attempts=1), run
            ) as actor:
                ack = await actor.publish(actor.subjects.nodes_from("actor-0"), realistic_turn_node("e2e", 0))
                assert ack.stream == actor.subjects.nodes_stream
            async with await BusClient.connect("allocator", BusConfig(servers=[url]), run) as allocator:
                consumer = await allocator.pull_consumer(
                    allocator.subjects.nodes_stream, allocator.subjects.allocator_consumer, TurnNode
                )
                got = []

                async def keep(node, delivery) -> None:
                    got.append(node.node_id)

                assert await consumer.process_batch(keep, timeout=2.0) == 1 and got == ["node-0"]
                await consumer.close()

        asyncio.run(use_bus())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert not _alive(server_pid), "nats-server outlived `tracerl bus`"
        host, port = url.removeprefix("nats://").split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()  # the server then gets SIGTERM from its parent-death signal
                process.wait()


def test_nats_server_stops_when_its_launcher_is_killed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, f"run.run_dir={run_dir}", "port=0", "monitor_port=0", "log.level=warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in process.stdout.readline():
            assert time.monotonic() < deadline and process.poll() is None
        server_pid = _nats_server_pid(run_dir)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while _alive(server_pid):
            assert time.monotonic() < deadline, "nats-server outlived a SIGKILLed launcher"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _nats_server_pid(run_dir: Path) -> int:
    return int((run_dir / "nats-server.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the killed bus process also counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
