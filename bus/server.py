"""Launch a real nats-server with JetStream, per-role and per-actor users, per-run permissions, TLS.

The config file is pure data built by ``render_server_config`` (nats-server reads JSON, a
subset of its own format), and ``plan_nodes`` decides the ports, names and store of each
node when the bus is a cluster. ``BusServer`` is the process shell around them: write the
files, start the binaries, wait for ``/healthz``, hot-reload when more runs are
authorised, stop.

Every node of a cluster gets the same users, passwords and permissions, so a client may
reconnect to any of them; routes between nodes authenticate with a separate generated
user that no client ever receives.

With TLS (``BusServerConfig.tls_enabled``) each node serves a certificate issued by the
run's CA (``bus.tls``), routes verify each other with it, and every credentials file holds
the CA certificate, so a client verifies the bus with nothing but its own file. Actors
with credentials of their own are users ``actor-<id>`` from ``credentials/actor-<id>.json``;
the files are the record of who may connect, so adding one (``add_actor``) rewrites every
local node's config from them and hot-reloads it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import os
import random
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from protocol import replace
from tracerl.logs import get_logger

from . import tls
from .config import MIB, BusServerConfig
from .permissions import ROLES, inbox_prefix, role_permissions

log = get_logger(__name__)


class BusServerError(RuntimeError):
    """nats-server could not be found, started, reloaded or stopped."""


class RoleCredentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a role needs to connect; stored as ``<run_dir>/credentials/<role>.json`` (0600)."""

    role: str
    user: str
    password: str
    servers: list[str]
    inbox_prefix: str
    # Set for an actor's own credential: the one actor id it may publish as.
    actor_id: str = ""
    # The run CA's certificate (PEM) when the bus serves TLS: the only server a client trusts.
    ca_pem: str = ""

    def write(self, path: Path) -> None:
        _write_private_json(path, msgspec.to_builtins(self))

    @classmethod
    def read(cls, path: Path) -> RoleCredentials:
        try:
            return msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError) as err:
            raise BusServerError(f"cannot read credentials {path}: {err}") from None


def credentials_path(run_dir: str | Path, role: str, actor_id: str = "") -> Path:
    """``credentials/<role>.json``, or ``credentials/actor-<id>.json`` for one actor's own."""
    return Path(run_dir) / "credentials" / (f"{actor_user(actor_id)}.json" if actor_id else f"{role}.json")


def actor_user(actor_id: str) -> str:
    return f"actor-{actor_id}"


def actor_credentials(
    actor_id: str, password: str, servers: list[str], ca_pem: str, role: str = "actor"
) -> RoleCredentials:
    """The credential of one actor: its own user, inbox and permissions (``bus.permissions``)."""
    return RoleCredentials(
        role=role,
        user=actor_user(actor_id),
        password=password,
        servers=servers,
        inbox_prefix=inbox_prefix(role, actor_id),
        actor_id=actor_id,
        ca_pem=ca_pem,
    )


def read_actor_credentials(run_dir: str | Path) -> dict[str, RoleCredentials]:
    """Every actor's own credential in ``<run_dir>/credentials``, by actor id."""
    found = {}
    for path in sorted((Path(run_dir) / "credentials").glob(f"{actor_user('*')}.json")):
        cred = RoleCredentials.read(path)
        if cred.actor_id and path == credentials_path(run_dir, "actor", cred.actor_id):
            found[cred.actor_id] = cred
    return found


def ensure_actor_credentials(run_dir: str | Path, actor_id: str, servers: list[str], ca_pem: str) -> RoleCredentials:
    """``actor_id``'s credential file, written with a fresh password unless it exists already
    (a copy brought to another cluster node, or an actor added before a restart)."""
    path = credentials_path(run_dir, "actor", actor_id)
    if path.is_file():
        existing = RoleCredentials.read(path)
        if existing.actor_id != actor_id:
            raise BusServerError(f"{path} holds the credential of actor {existing.actor_id!r}, not {actor_id!r}")
        cred = replace(existing, servers=servers, ca_pem=ca_pem)
    else:
        cred = actor_credentials(actor_id, secrets.token_urlsafe(24), servers, ca_pem)
    cred.write(path)
    return cred


def with_user(rendered: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A server config with ``entry`` as its user of that name (added, or replacing the old one)."""
    users = [u for u in rendered["authorization"]["users"] if u["user"] != entry["user"]]
    return {**rendered, "authorization": {**rendered["authorization"], "users": [*users, entry]}}


def add_actor_to_running_bus(config: BusServerConfig, actor_id: str, timeout_s: float = 10.0) -> RoleCredentials:
    """``tracerl bus add-actor``: from another process, give ``actor_id`` a credential and
    hot-reload every node this host's ``tracerl bus`` runs for ``config.run.run_dir``.

    The servers and CA of the new file are those every other credentials file of the run has.
    Nodes on other hosts reload when the same command runs there with a copy of the new file.
    """
    run_dir = Path(config.run.run_dir)
    configs = sorted(run_dir.glob("nats-server*.conf"))
    if not configs:
        raise BusServerError(f"no nats-server config in {run_dir}: is `tracerl bus` running with this run_dir?")
    known = [p for p in sorted((run_dir / "credentials").glob("*.json")) if p.stem in ROLES]
    if not known:
        raise BusServerError(f"no role credentials in {run_dir / 'credentials'} to take the servers and CA from")
    template = RoleCredentials.read(known[0])
    cred = ensure_actor_credentials(run_dir, actor_id, template.servers, template.ca_pem)
    entry = user_entry(cred, config.run_ids)
    for path in configs:
        rendered = json.loads(path.read_text())
        monitor = f"http://{rendered['http']}"
        before = _varz(monitor)["config_load_time"]
        _write_private_json(path, with_user(rendered, entry))
        os.kill(int(Path(rendered["pid_file"]).read_text().strip()), signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while _varz(monitor)["config_load_time"] == before:
            if time.monotonic() > deadline:
                raise BusServerError(f"nats-server of {path} did not reload within {timeout_s} s")
            time.sleep(0.02)
    log.info("actor_added", actor_id=actor_id, nodes=len(configs))
    return cred


def _varz(monitor_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=2.0) as resp:
        return json.loads(resp.read())


def ca_paths(run_dir: str | Path) -> tuple[Path, Path]:
    """The run CA's certificate and private key (the key never leaves the bus hosts)."""
    directory = Path(run_dir) / "credentials"
    return directory / "ca.pem", directory / "ca-key.pem"


class RouteCredentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The user nodes of one cluster present to each other; stored as ``credentials/cluster-routes.json``."""

    user: str
    password: str

    def write(self, path: Path) -> None:
        _write_private_json(path, msgspec.to_builtins(self))

    @classmethod
    def read(cls, path: Path) -> RouteCredentials:
        try:
            return msgspec.json.decode(Path(path).read_bytes(), type=cls)
        except (OSError, msgspec.DecodeError) as err:
            raise BusServerError(f"cannot read route credentials {path}: {err}") from None


def _write_private_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with 0600 from the start so a password is never world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(path, 0o600)


def _write_private_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def route_credentials_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "credentials" / "cluster-routes.json"


def generate_credentials(
    servers: list[str], token: Callable[[], str], *, ca_pem: str = "", roles: tuple[str, ...] = ROLES
) -> dict[str, RoleCredentials]:
    """One user per role with a fresh password from ``token`` (randomness is injected)."""
    return {
        role: RoleCredentials(
            role=role, user=role, password=token(), servers=servers, inbox_prefix=inbox_prefix(role), ca_pem=ca_pem
        )
        for role in roles
    }


def shared_roles(shared_actor: bool) -> tuple[str, ...]:
    """The roles with one credential each: all of them, or all but ``actor`` when every actor has its own."""
    return ROLES if shared_actor else tuple(role for role in ROLES if role != "actor")


def user_entry(cred: RoleCredentials, run_ids: list[str]) -> dict[str, Any]:
    """One user of the server config: a role's, or one actor's with only its own subjects."""
    permissions = role_permissions(cred.role, run_ids, cred.actor_id)
    return {"user": cred.user, "password": cred.password, "permissions": permissions.as_server_config()}


@dataclass(frozen=True)
class TlsFiles:
    """Where one node's certificate, key and the run's CA certificate are on disk."""

    cert_file: str
    key_file: str
    ca_file: str


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
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

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
                tls=config.tls_enabled,
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
                tls=config.tls_enabled,
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
            tls=config.tls_enabled,
        )
        for index in range(cluster.local_nodes)
    ]
    # Each node routes to all the others; the full mesh forms without relying on gossip.
    return [
        dataclasses.replace(node, routes=tuple(peer.route_url for peer in unrouted if peer is not node))
        for node in unrouted
    ]


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
    actors: dict[str, RoleCredentials] | None = None,
    tls_files: TlsFiles | None = None,
    max_file_store: int = 0,
    profile_port: int = 0,
) -> dict[str, Any]:
    """The nats-server config of one node; ``tls_files`` turns on TLS for clients and routes."""
    users = [user_entry(cred, run_ids) for cred in [*credentials.values(), *(actors or {}).values()]]
    rendered: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": f"127.0.0.1:{monitor_port}",
        "max_payload": max_payload,
        "pid_file": pid_file,
        "jetstream": {"store_dir": store_dir},
        "authorization": {"users": users},
    }
    if tls_files is not None:
        rendered["tls"] = {"cert_file": tls_files.cert_file, "key_file": tls_files.key_file, "timeout": 5}
    if max_file_store:
        rendered["jetstream"]["max_file_store"] = max_file_store
    if profile_port:
        rendered["prof_port"] = profile_port
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
        if tls_files is not None:
            # Mutual: each node presents its certificate and checks the peer's against the run's CA.
            rendered["cluster"]["tls"] = {
                "cert_file": tls_files.cert_file,
                "key_file": tls_files.key_file,
                "ca_file": tls_files.ca_file,
                "verify": True,
                "timeout": 5,
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


def server_environment(base: Mapping[str, str], memory_limit_mib: int) -> dict[str, str]:
    """The environment nats-server runs with: ``base``, plus the Go runtime's soft memory limit
    when one is configured (it then replaces any GOMEMLIMIT inherited from ``base``)."""
    environment = dict(base)
    if memory_limit_mib:
        environment["GOMEMLIMIT"] = f"{memory_limit_mib}MiB"
    return environment


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


#: Where ``free_port`` looks first: below the kernel's ephemeral range (Linux's default starts at 32768).
LISTEN_PORTS_LOW = 20000


def ephemeral_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The range the kernel draws ports from for outgoing connections and for binds to port 0."""
    try:
        low, high = (int(part) for part in Path(path).read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing is bound to now, for a server started a moment later.

    Picked below the ephemeral range: a port from a bind to 0 lies inside it, where any outgoing
    connection may take it before nats-server binds it ("address already in use" once in a full
    test run). Falls back to a bind to 0 when no port below the range is free.
    """
    low, _high = ephemeral_port_range()
    candidates = range(LISTEN_PORTS_LOW, low)
    rng = random.SystemRandom()
    for _ in range(min(64, len(candidates))):
        port = rng.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
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
        self.ca = self._load_or_generate_ca() if config.tls_enabled else None
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

    def credentials_file(self, role: str, actor_id: str = "") -> Path:
        return credentials_path(self.config.run.run_dir, role, actor_id)

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem if self.ca is not None else ""

    def _load_or_generate_ca(self) -> tls.KeyPair:
        # Kept across restarts: clients hold the CA certificate in their credentials files.
        cert_path, key_path = ca_paths(self.config.run.run_dir)
        if cert_path.is_file() and key_path.is_file():
            return tls.KeyPair(cert_path.read_text(), key_path.read_text())
        if self.config.cluster.join:
            raise BusServerError(
                f"a joining cluster node needs the run's CA ({cert_path} and {key_path}) from the first node"
            )
        ca = tls.generate_ca(self.config.run.run_id, datetime.datetime.now(datetime.UTC))
        _write_private_text(key_path, ca.key_pem)
        _write_private_text(cert_path, ca.cert_pem)
        return ca

    def _load_or_generate_credentials(self) -> dict[str, RoleCredentials]:
        # Reusing existing files lets a restarted bus accept roles that are still reconnecting,
        # and lets every node of a cluster accept the same users.
        servers = self.urls
        roles = shared_roles(self.config.shared_actor_enabled)
        paths = {role: credentials_path(self.config.run.run_dir, role) for role in roles}
        if all(p.is_file() for p in paths.values()):
            loaded = {role: RoleCredentials.read(p) for role, p in paths.items()}
            return {role: replace(c, servers=servers, ca_pem=self.ca_pem) for role, c in loaded.items()}
        if self.config.cluster.join:
            missing = sorted(str(p) for p in paths.values() if not p.is_file())
            raise BusServerError(
                "a joining cluster node needs the credentials of the first node (copy its "
                f"<run_dir>/credentials directory here); missing: {', '.join(missing)}"
            )
        return generate_credentials(servers, lambda: secrets.token_urlsafe(24), ca_pem=self.ca_pem, roles=roles)

    def actor_credentials(self) -> dict[str, RoleCredentials]:
        """The actors with credentials of their own, read from the credentials directory."""
        return read_actor_credentials(self.config.run.run_dir)

    def _ensure_actor_file(self, actor_id: str) -> RoleCredentials:
        return ensure_actor_credentials(self.config.run.run_dir, actor_id, self.urls, self.ca_pem)

    def add_actor(self, actor_id: str, timeout_s: float = 5.0) -> RoleCredentials:
        """Give ``actor_id`` a credential of its own and hot-reload every running local node."""
        cred = self._ensure_actor_file(actor_id)
        self._reload(timeout_s)
        return cred

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
        # Actors added before a restart keep their passwords, with this start's servers and CA.
        for actor_id in dict.fromkeys([*self.config.actors, *self.actor_credentials()]):
            paths[actor_user(actor_id)] = self.credentials_file("actor", actor_id)
            self._ensure_actor_file(actor_id)
        return paths

    def _tls_files(self, node: NodePlan) -> TlsFiles | None:
        """Issue this node a certificate for every address it may be dialled on (at each start)."""
        if self.ca is None:
            return None
        directory = Path(self.config.run.run_dir) / "tls"
        files = TlsFiles(
            cert_file=str((directory / f"{node.file_stem}.pem").resolve()),
            key_file=str((directory / f"{node.file_stem}-key.pem").resolve()),
            ca_file=str(ca_paths(self.config.run.run_dir)[0].resolve()),
        )
        if not Path(files.cert_file).is_file():
            hosts = tls.certificate_hosts(node.host, node.route_host, self.config.tls_hosts, [socket.gethostname()])
            issued = tls.issue_server_cert(self.ca, hosts, datetime.datetime.now(datetime.UTC))
            _write_private_text(Path(files.key_file), issued.key_pem)
            _write_private_text(Path(files.cert_file), issued.cert_pem)
        return files

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
            actors=self.actor_credentials(),
            tls_files=self._tls_files(node),
            max_file_store=self.config.max_store_mib * MIB,
            # One port per host: with several local nodes only the first one profiles.
            profile_port=self.config.profile_port if node is self.nodes[0] else 0,
        )
        path = self._config_path(node)
        _write_private_json(path, rendered)
        return path

    def start(self) -> BusServer:
        if self._processes:
            raise BusServerError("server already started")
        binary = find_server_binary(self.config.server_binary)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Certificates are issued afresh for this start's addresses; the CA stays.
        for node in self.nodes:
            for stale in (Path(self.config.run.run_dir) / "tls").glob(f"{node.file_stem}*.pem"):
                stale.unlink()
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
                        env=server_environment(os.environ, self.config.memory_limit_mib),
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
            memory_limit_mib=self.config.memory_limit_mib or None,
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
        return _varz(f"http://127.0.0.1:{node.monitor_port}")["config_load_time"]

    def authorize_runs(self, run_ids: list[str], timeout_s: float = 5.0) -> None:
        """Add permissions for more runs and hot-reload; returns once every local node applied them.

        Nodes of the cluster on other hosts are not reached from here: their own
        ``tracerl bus`` must be restarted with the same ``extra_run_ids``.
        """
        merged = list(dict.fromkeys([*self.run_ids, *run_ids]))
        if merged == self.run_ids:
            return
        self.run_ids = merged
        self._reload(timeout_s)

    def _reload(self, timeout_s: float) -> None:
        """Rewrite every running local node's config and wait until each has loaded it."""
        running = {stem: p for stem, p in self._processes.items() if p.poll() is None}
        if not running:
            raise BusServerError("server is not running")
        live_nodes = [node for node in self.nodes if node.file_stem in running]
        before = {node.file_stem: self._config_load_time(node) for node in live_nodes}
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
