"""The bus across hosts, emulated with network namespaces joined by a bridge.

Each "host" is a namespace with one veth, address 10.203.7.x/24, and its own loopback;
the bridge lives in a further namespace, so the test never touches the machine's own
network. Role processes reach the bus only through their veth, with only their own
role's credentials file copied over, exactly as the README's multi-host recipe says.
Beyond loopback the bus serves TLS from the run's CA and every actor has its own
credential: the actor host gets only ``actor-<id>.json``, which holds the CA certificate.

Needs root and iproute2's ``ip``; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bus.server import RoleCredentials

pytestmark = pytest.mark.nats

REPO = Path(__file__).parents[2]
SUBNET = "10.203.7"
TRACERL = str(Path(sys.executable).parent / "tracerl")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@dataclass
class Lab:
    """Namespaces standing in for hosts, and the processes started in them."""

    prefix: str
    namespaces: list[str] = field(default_factory=list)
    address: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def build(self, hosts: list[str]) -> None:
        switch = self.ns("sw")
        self._add_namespace(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for index, host in enumerate(hosts, start=1):
            ns = self.ns(host)
            self._add_namespace(ns)
            # Both veth ends are created inside namespaces of this lab, never in the host's.
            _ip("-n", switch, "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", switch, "link", "set", f"v{index}", "master", "br0", "up")
            address = f"{SUBNET}.{index}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.address[host] = address

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)

    def start(self, host: str, argv: list[str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
        )
        self.processes.append(process)
        return process

    def run(self, host: str, argv: list[str], timeout: float = 20) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def teardown(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # nats-server follows through its parent-death signal.
                process.kill()
                process.wait()
        for name in reversed(self.namespaces):
            _ip("netns", "del", name, check=False)


@pytest.fixture
def lab() -> Iterator[Callable[[list[str]], Lab]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed; the multi-host tests need it (CI must install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    probe = f"trlprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {made.stderr.strip()}")
    _ip("netns", "del", probe, check=False)
    labs: list[Lab] = []

    def build(hosts: list[str]) -> Lab:
        built = Lab(prefix=f"trl{uuid.uuid4().hex[:6]}")
        labs.append(built)
        built.build(hosts)
        return built

    try:
        yield build
    finally:
        for built in labs:
            built.teardown()
        leftovers = [
            line for line in _ip("netns", "list").stdout.splitlines() if any(line.startswith(b.prefix) for b in labs)
        ]
        assert not leftovers, f"namespaces left behind: {leftovers}"


def read_until(process: subprocess.Popen[str], done: Callable[[str], bool], timeout: float) -> list[str]:
    """Lines of ``process`` until one satisfies ``done``; fails with what was printed."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not lines or not done(lines[-1]):
        assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
        lines.append(process.stdout.readline())
    return lines


def start_bus(lab: Lab, host: str, run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    settings = [
        f"run.run_dir={run_dir}",
        "run.run_id=mh",
        f"host={lab.address[host]}",
        "log.level=warning",
        "log.json_file=false",
        *extra,
    ]
    return lab.start(host, [TRACERL, "bus", *(arg for s in settings for arg in ("--set", s))])


def copy_credentials(source: Path, names: list[str], target: Path) -> Path:
    """What an operator does with scp: each host gets only its own roles' (or actor's) files."""
    target.mkdir(parents=True)
    for name in names:
        shutil.copy2(source / "credentials" / f"{name}.json", target / f"{name}.json")
    return target


def assert_actor_held_to_its_identity(actor_result: dict) -> None:
    """Refused without credentials, refused without the run's CA, refused publishing as another actor."""
    assert "Authorization Violation" in actor_result["refused"]
    assert "CERTIFICATE_VERIFY_FAILED" in actor_result["refused_without_ca"], actor_result["refused_without_ca"]
    assert "permissions violation" in actor_result["impostor"].lower(), actor_result["impostor"]
    assert actor_result["tls"] is True


def role_program(lab: Lab, host: str, role: str, servers: list[str], credentials: Path) -> subprocess.Popen[str]:
    return lab.start(
        host,
        [
            sys.executable,
            "-m",
            "tests.bus.multihost_roles",
            role,
            "--servers",
            ",".join(servers),
            "--credentials-dir",
            str(credentials),
            "--run-id",
            "mh",
        ],
    )


def result_of(process: subprocess.Popen[str], timeout: float = 45) -> dict:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return json.loads(output.strip().splitlines()[-1])


def test_roles_on_other_hosts_reach_the_bus_only_through_their_own_addresses(
    lab: Callable[[list[str]], Lab], tmp_path: Path
) -> None:
    hosts = lab(["bus", "actor", "trainer"])
    bus_dir = tmp_path / "bus-host"
    bus = start_bus(hosts, "bus", bus_dir)
    read_until(bus, lambda line: "learner" in line and "credentials" in line, timeout=30)
    url = f"tls://{hosts.address['bus']}:4222"
    # Beyond loopback there is no credential any actor could use: each is added by id, while the bus runs.
    assert not (bus_dir / "credentials" / "actor.json").exists()
    added = hosts.run(
        "bus",
        [TRACERL, "bus", "add-actor", "a1", "--set", f"run.run_dir={bus_dir}", "--set", "run.run_id=mh"],
        timeout=60,
    )
    assert "actor-a1.json" in added
    assert RoleCredentials.read(bus_dir / "credentials" / "actor-a1.json").servers == [url]

    actor_creds = copy_credentials(bus_dir, ["actor-a1"], tmp_path / "actor-host")
    trainer_creds = copy_credentials(bus_dir, ["allocator", "learner"], tmp_path / "trainer-host")
    # The actor's namespace has no other way out: only loopback and its veth address.
    addresses = hosts.run("actor", ["ip", "-4", "-o", "addr"])
    assert sorted(line.split()[3] for line in addresses.splitlines()) == ["10.203.7.2/24", "127.0.0.1/8"]
    assert "Connection refused" in _refused_on_loopback(hosts, "actor")

    trainer = role_program(hosts, "trainer", "trainer", [url], trainer_creds)
    actor = role_program(hosts, "actor", "actor", [url], actor_creds)
    actor_result, trainer_result = result_of(actor), result_of(trainer)

    assert_actor_held_to_its_identity(actor_result)
    assert trainer_result["node_actor"] == actor_result["actor_id"] == "a1"
    assert actor_result["weights_ok"] and actor_result["weights_bytes"] == 3 * 1024 * 1024
    assert actor_result["work_id"] == trainer_result["work_id"] == trainer_result["node_work_id"]
    assert trainer_result["node_policy_version"] == 1
    assert actor_result["server"] == trainer_result["server"] == f"{hosts.address['bus']}:4222"

    # The bus saw each role arrive from its own host's address.
    connz = json.loads(
        hosts.run(
            "bus",
            [
                sys.executable,
                "-c",
                (
                    "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:8222/connz?state=all&limit=1000').read().decode())"
                ),
            ],
        )
    )
    ours = [c for c in connz["connections"] if c.get("name", "").startswith("tracerl-")]
    assert all(c.get("tls_version", "").startswith("1.") for c in ours), ours
    seen = {(c.get("name"), c["ip"]) for c in ours}
    assert {
        ("tracerl-actor-mh", hosts.address["actor"]),
        ("tracerl-allocator-mh", hosts.address["trainer"]),
        ("tracerl-learner-mh", hosts.address["trainer"]),
    } <= seen

    bus.send_signal(signal.SIGTERM)
    assert bus.wait(timeout=15) == 0


def _refused_on_loopback(hosts: Lab, host: str) -> str:
    probe = (
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 4222), timeout=2)\n"
        "except OSError as err:\n    print(err)\n"
    )
    return hosts.run(host, [sys.executable, "-c", probe])


def test_a_three_host_cluster_forms_from_joining_nodes_and_serves_roles_on_any_node(
    lab: Callable[[list[str]], Lab], tmp_path: Path
) -> None:
    hosts = lab(["bus1", "bus2", "bus3", "actor", "trainer"])
    nodes = ["bus1", "bus2", "bus3"]
    run_dirs = {node: tmp_path / node for node in nodes}

    def cluster_settings(node: str) -> list[str]:
        peers = ",".join(f"nats-route://{hosts.address[p]}:6222" for p in nodes if p != node)
        return ["cluster.name=trace", f"cluster.node_name={node}", f"cluster.routes=[{peers}]", "actors=[a7]"]

    first = start_bus(hosts, "bus1", run_dirs["bus1"], *cluster_settings("bus1"))
    read_until(first, lambda line: "waiting for 3 JetStream nodes" in line, timeout=30)
    # Credentials (with the run's CA and its key) exist as soon as the first node waits; the others join with a copy.
    for node in nodes[1:]:
        shutil.copytree(run_dirs["bus1"] / "credentials", run_dirs[node] / "credentials")
    joiners = [
        start_bus(hosts, node, run_dirs[node], *cluster_settings(node), "cluster.join=true") for node in nodes[1:]
    ]
    for process in (first, *joiners):
        read_until(process, lambda line: "learner" in line and "credentials" in line, timeout=45)

    # Replicated: bus1 reports only streams it holds a copy of, with the peers other than itself.
    jsz = json.loads(
        hosts.run(
            "bus1",
            [
                sys.executable,
                "-c",
                (
                    "import urllib.request; print(urllib.request.urlopen("
                    "'http://127.0.0.1:8222/jsz?streams=true&config=true').read().decode())"
                ),
            ],
        )
    )
    streams = [s for account in jsz["account_details"] for s in account.get("stream_detail", [])]
    assert {s["name"] for s in streams} >= {
        "TRACERL_mh_NODES",
        "TRACERL_mh_WORK",
        "KV_tracerl_mh_state",
        "OBJ_tracerl_mh_weights",
    }
    for stream in streams:
        assert stream["config"]["num_replicas"] == 3, stream["name"]
        placed = {"bus1", stream["cluster"]["leader"], *(r["name"] for r in stream["cluster"]["replicas"])}
        assert placed == set(nodes), stream["name"]

    # The routes between the hosts are TLS too, each node checking its peer's certificate.
    varz = json.loads(
        hosts.run(
            "bus1",
            [
                sys.executable,
                "-c",
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8222/varz').read().decode())",
            ],
        )
    )
    assert varz["cluster"]["tls_required"] and varz["cluster"]["tls_verify"], varz["cluster"]

    # Roles on two other hosts, each given a different node first: routes carry the traffic.
    urls = {node: f"tls://{hosts.address[node]}:4222" for node in nodes}
    trainer = role_program(
        hosts,
        "trainer",
        "trainer",
        [urls["bus2"]],
        copy_credentials(run_dirs["bus1"], ["allocator", "learner"], tmp_path / "trainer-host"),
    )
    actor = role_program(
        hosts,
        "actor",
        "actor",
        [urls["bus3"], urls["bus1"]],
        copy_credentials(run_dirs["bus1"], ["actor-a7"], tmp_path / "actor-host"),
    )
    actor_result, trainer_result = result_of(actor), result_of(trainer)
    assert_actor_held_to_its_identity(actor_result)
    assert trainer_result["node_actor"] == "a7"
    assert actor_result["weights_ok"]
    assert actor_result["work_id"] == trainer_result["node_work_id"]
    assert trainer_result["server"] == f"{hosts.address['bus2']}:4222"

    for process in (*joiners, first):
        process.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=20) for p in (*joiners, first)] == [0, 0, 0]
