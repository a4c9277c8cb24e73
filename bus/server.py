"""Launch a real nats-server with JetStream, per-role users and per-run permissions.

The config file is pure data built by ``render_server_config`` (nats-server reads JSON, a
subset of its own format), and ``plan_nodes`` decides the ports, names and store of each
node when the bus is a cluster. ``BusServer`` is the process shell around them: write the
files, start the binaries, wait for ``/healthz``, hot-reload when more runs are
authorised, stop.

Every node of a cluster gets the same users, passwords and permissions, so a client may
reconnect to any of them; routes between nodes authenticate with a separate generated
user that no client ever receives.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracerl.logs import get_logger
from tracerl.typed import SchemaError, from_plain, to_plain

from .config import MIB, BusServerConfig
from .permissions import ROLES, inbox_prefix, role_permissions

log = get_logger(__name__)


class BusServerError(RuntimeError):
    """nats-server could not be found, started, reloaded or stopped."""


@dataclass(frozen=True)
class RoleCredentials:
    """What a role needs to connect; stored as ``<run_dir>/credentials/<role>.json`` (0600)."""

    role: str
    user: str
    password: str
    servers: list[str]
    inbox_prefix: str

    def write(self, path: Path) -> None:
        _write_private_json(path, to_plain(self))

    @classmethod
    def read(cls, path: Path) -> RoleCredentials:
        try:
            data = json.loads(Path(path).read_text())
            return from_plain(cls, data)
        except (OSError, json.JSONDecodeError, SchemaError) as err:
            raise BusServerError(f"cannot read credentials {path}: {err}") from None


def credentials_path(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / "credentials" / f"{role}.json"


@dataclass(frozen=True)
class RouteCredentials:
    """The user nodes of one cluster present to each other; stored as ``credentials/cluster-routes.json``."""

    user: str
    password: str

    def write(self, path: Path) -> None:
        _write_private_json(path, to_plain(self))

    @classmethod
    def read(cls, path: Path) -> RouteCredentials:
        try:
            return from_plain(cls, json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, SchemaError) as err:
            raise BusServerError(f"cannot read route credentials {path}: {err}") from None


def _write_private_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with 0600 from the start so a password is never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(path, 0o600)


def route_credentials_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "credentials" / "cluster-routes.json"


def generate_credentials(servers: list[str], token: Callable[[], str]) -> dict[str, RoleCredentials]:
    """One user per role with a fresh password from ``token`` (randomness is injected)."""
    return {
        role: RoleCredentials(role=role, user=role, password=token(), servers=servers, inbox_prefix=inbox_prefix(role))
        for role in ROLES
    }


@dataclass(frozen=True)
class NodePlan:
    """Where one nats-server of the bus listens and keeps its files (no I/O)."""

    # JetStream server name; empty for a single, unclustered server.
    name: str
    host: str
    port: int
    monitor_port: int
    # Files are "<run_dir>/<file_stem>.conf|.pid" and "<run_dir>/logs/<file_stem>.log".
    file_stem: str
    store_dir: str
    cluster_name: str = ""
    route_host: str = ""
    route_port: int = 0
    # Peers' route URLs without credentials.
    routes: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats-route://{_connectable(self.route_host)}:{self.route_port}"


def _connectable(host: str) -> str:
    # A wildcard listen address is not something a peer can dial; on one host, loopback is.
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def plan_nodes(config: BusServerConfig, port_for: Callable[[str], int]) -> list[NodePlan]:
    """The nodes this bus process runs. ``port_for(host)`` supplies a free port where 0 is configured.

    Local cluster nodes use consecutive ports from the configured ones, so a three-node
    dev cluster on 4222/8222/6222 is also on 4223/8223/6223 and 4224/8224/6224.
    """
    store = str(config.store_path.resolve())
    cluster = config.cluster
    if not cluster.enabled:
        return [
            NodePlan(
                name="",
                host=config.host,
                port=config.port or port_for(config.host),
                monitor_port=config.monitor_port or port_for("127.0.0.1"),
                file_stem="nats-server",
                store_dir=store,
            )
        ]
    route_host = cluster.route_host or config.host

    def pick(configured: int, index: int, host: str) -> int:
        return configured + index if configured else port_for(host)

    if not cluster.local_nodes:
        name = cluster.node_name
        return [
            NodePlan(
                name=name,
                host=config.host,
                port=pick(config.port, 0, config.host),
                monitor_port=pick(config.monitor_port, 0, "127.0.0.1"),
                file_stem=f"nats-server-{name}",
                store_dir=str(Path(store) / name),
                cluster_name=cluster.name,
                route_host=route_host,
                route_port=pick(cluster.route_port, 0, route_host),
                routes=tuple(dict.fromkeys(cluster.routes)),
            )
        ]
    unrouted = [
        NodePlan(
            name=f"{cluster.name}-n{index}",
            host=config.host,
            port=pick(config.port, index, config.host),
            monitor_port=pick(config.monitor_port, index, "127.0.0.1"),
            file_stem=f"nats-server-{cluster.name}-n{index}",
            store_dir=str(Path(store) / f"{cluster.name}-n{index}"),
            cluster_name=cluster.name,
            route_host=route_host,
            route_port=pick(cluster.route_port, index, route_host),
        )
        for index in range(cluster.local_nodes)
    ]
    # Each node routes to all the others; the full mesh forms without relying on gossip.
    return [replace(node, routes=tuple(peer.route_url for peer in unrouted if peer is not node)) for node in unrouted]


def route_url_with_credentials(route: str, credentials: RouteCredentials) -> str:
    scheme, _, address = route.partition("://")
    user = urllib.parse.quote(credentials.user, safe="")
    password = urllib.parse.quote(credentials.password, safe="")
    return f"{scheme}://{user}:{password}@{address}"


def render_server_config(
    *,
    host: str,
    port: int,
    monitor_port: int,
    store_dir: str,
    pid_file: str,
    max_payload: int,
    credentials: dict[str, RoleCredentials],
    run_ids: list[str],
    node: NodePlan | None = None,
    route_credentials: RouteCredentials | None = None,
    max_file_store: int = 0,
) -> dict[str, Any]:
    users = [
        {
            "user": cred.user,
            "password": cred.password,
            "permissions": role_permissions(role, run_ids).as_server_config(),
        }
        for role, cred in credentials.items()
    ]
    rendered: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": f"127.0.0.1:{monitor_port}",
        "max_payload": max_payload,
        "pid_file": pid_file,
        "jetstream": {"store_dir": store_dir},
        "authorization": {"users": users},
    }
    if max_file_store:
        rendered["jetstream"]["max_file_store"] = max_file_store
    if node is not None and node.cluster_name:
        if route_credentials is None:
            raise ValueError("a clustered node needs route credentials")
        rendered["server_name"] = node.name
        rendered["cluster"] = {
            "name": node.cluster_name,
            "listen": f"{node.route_host}:{node.route_port}",
            "authorization": {"user": route_credentials.user, "password": route_credentials.password},
            "routes": [route_url_with_credentials(route, route_credentials) for route in node.routes],
        }
    return rendered


def jetstream_cluster_ready(jsz: dict[str, Any], replicas: int) -> bool:
    """From a node's ``/jsz``: has the cluster formed far enough to place ``replicas`` copies?

    A single server is ready at once. A cluster node needs an elected meta leader and
    at least ``replicas`` known servers that are not marked offline (``replicas`` in the
    report lists the peers other than the node asked). Placement can still fail for a
    moment after this, so provisioning retries too.
    """
    meta = jsz.get("meta_cluster")
    if not meta:
        return replicas <= 1
    if not meta.get("leader"):
        return False
    peers = meta.get("replicas") or []
    reachable = 1 + sum(1 for peer in peers if not peer.get("offline"))
    return reachable >= replicas


def find_server_binary(configured: str = "") -> str:
    """The configured path, else the binary installed next to this Python, else PATH."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise BusServerError(f"nats-server binary {configured!r} is not executable")
        return configured
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BusServerError("nats-server not found next to the Python interpreter nor on PATH")
    return found


def _terminate_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even by SIGKILL), the server
    gets SIGTERM and shuts down cleanly instead of holding the port and store forever."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BusServer:
    """The running nats-server(s) of the bus for one or more runs. Use as a context manager or start/stop.

    Unclustered, this is one server; with ``cluster.local_nodes`` it is that many routed
    nodes; with ``cluster.routes`` it is this host's one node of a larger cluster. The
    single-server attributes (``url``, ``port``, ``pid``, ``config_path``…) describe the
    first node; ``urls``, ``nodes`` and ``pids`` describe them all.
    """

    def __init__(self, config: BusServerConfig) -> None:
        self.config = config
        self.nodes = plan_nodes(config, free_port)
        self.port = self.nodes[0].port
        self.monitor_port = self.nodes[0].monitor_port
        self.run_ids = config.run_ids
        self.credentials = self._load_or_generate_credentials()
        self.route_credentials = self._load_or_generate_route_credentials()
        self.config_path = self._config_path(self.nodes[0])
        self.log_path = self._log_path(self.nodes[0])
        self.pid_path = self._pid_path(self.nodes[0])
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def _config_path(self, node: NodePlan) -> Path:
        return Path(self.config.run.run_dir) / f"{node.file_stem}.conf"

    def _log_path(self, node: NodePlan) -> Path:
        return Path(self.config.run.run_dir) / "logs" / f"{node.file_stem}.log"

    def _pid_path(self, node: NodePlan) -> Path:
        return Path(self.config.run.run_dir) / f"{node.file_stem}.pid"

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        """Every local node's client URL: what clients should list to fail over."""
        return [node.url for node in self.nodes]

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        process = self._processes.get(self.nodes[0].file_stem)
        return process.pid if process else None

    @property
    def pids(self) -> dict[str, int]:
        """Process id per running node, keyed by server name ("" when unclustered)."""
        running = self._processes
        return {node.name: running[node.file_stem].pid for node in self.nodes if node.file_stem in running}

    def credentials_file(self, role: str) -> Path:
        return credentials_path(self.config.run.run_dir, role)

    def _load_or_generate_credentials(self) -> dict[str, RoleCredentials]:
        # Reusing existing files lets a restarted bus accept roles that are still reconnecting,
        # and lets every node of a cluster accept the same users.
        servers = self.urls
        paths = {role: credentials_path(self.config.run.run_dir, role) for role in ROLES}
        if all(p.is_file() for p in paths.values()):
            loaded = {role: RoleCredentials.read(p) for role, p in paths.items()}
            return {
                role: RoleCredentials(c.role, c.user, c.password, servers, c.inbox_prefix) for role, c in loaded.items()
            }
        if self.config.cluster.join:
            missing = sorted(str(p) for p in paths.values() if not p.is_file())
            raise BusServerError(
                "a joining cluster node needs the credentials of the first node (copy its "
                f"<run_dir>/credentials directory here); missing: {', '.join(missing)}"
            )
        return generate_credentials(servers, lambda: secrets.token_urlsafe(24))

    def _load_or_generate_route_credentials(self) -> RouteCredentials | None:
        if not self.config.cluster.enabled:
            return None
        path = route_credentials_path(self.config.run.run_dir)
        if path.is_file():
            return RouteCredentials.read(path)
        if self.config.cluster.join:
            raise BusServerError(f"a joining cluster node needs {path} from the first node")
        return RouteCredentials(user="route", password=secrets.token_urlsafe(24))

    def write_credentials(self) -> dict[str, Path]:
        paths = {}
        for role, cred in self.credentials.items():
            path = self.credentials_file(role)
            cred.write(path)
            paths[role] = path
        if self.route_credentials is not None:
            self.route_credentials.write(route_credentials_path(self.config.run.run_dir))
        return paths

    def _write_config(self, node: NodePlan) -> Path:
        rendered = render_server_config(
            host=node.host,
            port=node.port,
            monitor_port=node.monitor_port,
            store_dir=node.store_dir,
            pid_file=str(self._pid_path(node).resolve()),
            max_payload=self.config.max_payload,
            credentials=self.credentials,
            run_ids=self.run_ids,
            node=node,
            route_credentials=self.route_credentials,
            max_file_store=self.config.max_store_mib * MIB,
        )
        path = self._config_path(node)
        _write_private_json(path, rendered)
        return path

    def start(self) -> BusServer:
        if self._processes:
            raise BusServerError("server already started")
        binary = find_server_binary(self.config.server_binary)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.write_credentials()
        started = time.monotonic()
        try:
            for node in self.nodes:
                Path(node.store_dir).mkdir(parents=True, exist_ok=True)
                config_path = self._write_config(node)
                with open(self._log_path(node), "ab") as log_file:
                    self._processes[node.file_stem] = subprocess.Popen(
                        [binary, "-c", str(config_path)],
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=_terminate_with_parent,
                    )
            for node in self.nodes:
                self._wait_healthy(node, started)
        except BaseException:
            self.stop()
            raise
        log.info(
            "nats_server_started",
            url=self.url,
            nodes=[node.name for node in self.nodes if node.name],
            pid=self.pid,
            seconds=round(time.monotonic() - started, 3),
        )
        return self

    def _wait_healthy(self, node: NodePlan, started: float) -> None:
        process = self._processes[node.file_stem]
        log_path = self._log_path(node)
        deadline = started + self.config.startup_timeout_s
        # A cluster node's plain /healthz also waits for JetStream peers, which may not be
        # up yet; "is this server serving" is the question here (see wait_jetstream_ready).
        query = "?js-server-only=true" if node.cluster_name else ""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BusServerError(f"nats-server exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{node.monitor_port}/healthz{query}", timeout=1.0
                ) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise BusServerError(f"nats-server not healthy after {self.config.startup_timeout_s} s; see {log_path}")

    def wait_jetstream_ready(self, replicas: int, timeout_s: float) -> None:
        """Block until streams with ``replicas`` copies can be placed (the cluster has formed)."""
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{self.monitor_url}/jsz", timeout=1.0) as resp:
                    if jetstream_cluster_ready(json.loads(resp.read()), replicas):
                        log.info("jetstream_ready", replicas=replicas, seconds=round(time.monotonic() - started, 3))
                        return
            except (urllib.error.URLError, OSError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise BusServerError(
                    f"JetStream cannot place {replicas} replicas after {timeout_s} s: are the other "
                    f"cluster nodes up and routed? see {self.log_path}"
                )
            time.sleep(0.1)

    def _config_load_time(self, node: NodePlan) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/varz", timeout=2.0) as resp:
            return json.loads(resp.read())["config_load_time"]

    def authorize_runs(self, run_ids: list[str], timeout_s: float = 5.0) -> None:
        """Add permissions for more runs and hot-reload; returns once every local node applied them.

        Nodes of the cluster on other hosts are not reached from here: their own
        ``tracerl bus`` must be restarted with the same ``extra_run_ids``.
        """
        merged = list(dict.fromkeys([*self.run_ids, *run_ids]))
        if merged == self.run_ids:
            return
        running = {stem: p for stem, p in self._processes.items() if p.poll() is None}
        if not running:
            raise BusServerError("server is not running")
        live_nodes = [node for node in self.nodes if node.file_stem in running]
        before = {node.file_stem: self._config_load_time(node) for node in live_nodes}
        self.run_ids = merged
        for node in live_nodes:
            self._write_config(node)
            running[node.file_stem].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        for node in live_nodes:
            while self._config_load_time(node) == before[node.file_stem]:
                if time.monotonic() > deadline:
                    raise BusServerError(f"nats-server did not reload within {timeout_s} s; see {self._log_path(node)}")
                time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM every node (nats-server flushes JetStream and exits), SIGKILL only if one hangs.

        Returns the first node's exit code.
        """
        processes, self._processes = self._processes, {}
        if not processes:
            return None
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("nats_server_kill", pid=process.pid, reason="no exit after SIGTERM")
                process.kill()
                process.wait()
            log.info("nats_server_stopped", pid=process.pid, returncode=process.returncode)
        return processes[self.nodes[0].file_stem].returncode if self.nodes[0].file_stem in processes else None

    def __enter__(self) -> BusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
