"""Typed configuration of the `tracerl bus` role (nats-server launcher and provisioning)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from protocol.subjects import check_run_id
from tracerl.config import LogConfig, RunConfig

MIB = 1024 * 1024
GIB = 1024 * MIB
MAX_REPLICAS = 5
DEFAULT_CLUSTER_REPLICAS = 3
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class StreamLimits:
    """Durable-consumer and retention settings applied by provisioning."""

    # A work item or node not acked within ack_wait goes back to another consumer.
    ack_wait_s: float = 30.0
    # After this many deliveries a message is treated as poisoned and moved to the DLQ.
    max_deliver: int = 5
    # Nodes, trees and DLQ copies are kept this long (they are also useful for replay).
    max_age_s: float = 7 * 24 * 3600.0
    # Byte caps of the same streams (0: none); past a cap the oldest messages go. A restarted
    # allocator must never find a node whose tree is gone (it would reopen that tree), and a
    # tree holds copies of its nodes, so the trees' cap is at least twice the nodes'.
    # JetStream reserves each cap in the server's file-store budget when the stream is made,
    # so the caps also limit how many runs one server can hold.
    nodes_max_bytes: int = 512 * MIB
    trees_max_bytes: int = 1 * GIB
    dead_letter_max_bytes: int = 64 * MIB
    # Per-actor work consumers that see no actor for this long are removed by the server.
    actor_consumer_inactive_s: float = 3600.0
    duplicate_window_s: float = 120.0
    # Copies of every stream and bucket (JetStream allows 1 to 5). 0 means "decided by the
    # bus": 3 on a cluster of at least 3 nodes, so losing any one node loses nothing, else 1.
    replicas: int = 0

    def __post_init__(self) -> None:
        if self.ack_wait_s <= 0:
            raise ValueError("streams.ack_wait_s must be > 0")
        if self.max_deliver < 1:
            raise ValueError("streams.max_deliver must be >= 1")
        if self.max_age_s <= 0:
            raise ValueError("streams.max_age_s must be > 0")
        for name in ("nodes_max_bytes", "trees_max_bytes", "dead_letter_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"streams.{name} must be >= 0 (0: no cap)")
        if self.trees_max_bytes and not (self.nodes_max_bytes and self.trees_max_bytes >= 2 * self.nodes_max_bytes):
            raise ValueError(
                "streams.trees_max_bytes needs a streams.nodes_max_bytes of at most half of it: "
                "trees must outlive their nodes"
            )
        if self.actor_consumer_inactive_s <= 0:
            raise ValueError("streams.actor_consumer_inactive_s must be > 0")
        if self.duplicate_window_s < 0:
            raise ValueError("streams.duplicate_window_s must be >= 0")
        if not 0 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"streams.replicas must be in [0, {MAX_REPLICAS}], got {self.replicas}")

    @property
    def num_replicas(self) -> int:
        """The replica count provisioning asks for; an undecided 0 provisions one copy."""
        return self.replicas or 1


@dataclass(frozen=True)
class ClusterConfig:
    """Routes between nats-servers, so that JetStream replicates and clients can fail over.

    Two ways to use it:

    - ``local_nodes: 3`` (dev and tests): one ``tracerl bus`` starts three nodes on this
      host, on consecutive client, monitor and route ports (or free ones when a port is 0).
    - one node per host: ``name`` the same everywhere, a distinct ``node_name``, and
      ``routes`` listing the peers' route URLs. The first node generates the credentials;
      every other node sets ``join: true`` and needs a copy of ``<run_dir>/credentials``.
    """

    # Empty means "not clustered": a single nats-server, as without this section.
    name: str = ""
    # This node's JetStream server name, unique in the cluster (required with routes;
    # local nodes are named "<name>-n0", "<name>-n1", ...).
    node_name: str = ""
    # Address this node's route listener binds, which its peers dial; empty means the bus's host.
    route_host: str = ""
    route_port: int = 6222
    # The other nodes' route URLs, e.g. nats-route://10.0.0.2:6222; their count sizes the cluster.
    routes: list[str] = field(default_factory=list)
    # Start this many nodes in this process (0: just this one node).
    local_nodes: int = 0
    # A joining node reuses the run's credentials and leaves provisioning to the first node.
    join: bool = False
    # How long the first node waits for enough peers to place replicated streams (time
    # enough to copy its credentials to the other hosts and start them there).
    form_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.name and not _NAME.match(self.name):
            raise ValueError(f"cluster.name {self.name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if self.node_name and not _NAME.match(self.node_name):
            raise ValueError(f"cluster.node_name {self.node_name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if not 0 <= self.route_port <= 65535:
            raise ValueError(f"cluster.route_port must be in [0, 65535], got {self.route_port}")
        if self.local_nodes < 0:
            raise ValueError("cluster.local_nodes must be >= 0")
        if self.form_timeout_s <= 0:
            raise ValueError("cluster.form_timeout_s must be > 0")
        for route in self.routes:
            if not route.startswith("nats-route://") or "@" in route:
                raise ValueError(
                    f"cluster.routes entry {route!r} must look like nats-route://HOST:PORT "
                    "(route credentials are added by the bus)"
                )
        if not self.name and (self.routes or self.local_nodes or self.node_name or self.join):
            raise ValueError("cluster.name is required when cluster.routes, local_nodes, node_name or join is set")
        if self.local_nodes and (self.routes or self.node_name or self.join):
            raise ValueError("cluster.local_nodes starts a whole cluster; it excludes routes, node_name and join")
        if self.name and not self.local_nodes and not (self.routes and self.node_name):
            raise ValueError(
                "a clustered node needs cluster.routes and a cluster.node_name unique in the cluster "
                "(or cluster.local_nodes to run the whole cluster on this host)"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    @property
    def size(self) -> int:
        """Nodes this config knows of: the local ones, or this node plus its distinct peers."""
        if not self.enabled:
            return 1
        if self.local_nodes:
            return self.local_nodes
        return 1 + len(set(self.routes))


@dataclass(frozen=True)
class BusServerConfig:
    """The nats-server (or cluster nodes) with JetStream for a run, plus its credentials and streams."""

    run: RunConfig = field(default_factory=RunConfig)
    log: LogConfig = field(default_factory=LogConfig)
    streams: StreamLimits = field(default_factory=StreamLimits)
    host: str = "127.0.0.1"
    port: int = 4222
    # HTTP monitoring, used for readiness and reload checks; always on loopback.
    # For both ports, 0 means "a free port chosen at start".
    monitor_port: int = 8222
    # Empty means "<run_dir>/nats".
    store_dir: str = ""
    max_payload: int = 8 * MIB
    # JetStream's file store limit on each node, in MiB; 0 leaves it to nats-server (a share of
    # the free disk). Publishes past it are refused rather than filling the disk.
    max_store_mib: int = 0
    # Further run ids served by the same server (several runs may share one deployment).
    extra_run_ids: list[str] = field(default_factory=list)
    # Empty means "<venv>/bin/nats-server next to this Python, else nats-server on PATH".
    server_binary: str = ""
    startup_timeout_s: float = 15.0
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Serve TLS with a certificate from the run's own CA (clients verify it with the CA in
    # their credentials file). Unset means: on whenever the bus listens beyond loopback.
    tls: bool | None = None
    # Further names or addresses clients use to reach the bus (a DNS name, a public address),
    # added to the server certificate besides the listen and route hosts and this hostname.
    tls_hosts: list[str] = field(default_factory=list)
    # The one `actor` credential any actor may use, publishing as any actor id. Unset means:
    # only on loopback; beyond it each actor has its own (`actors`, `tracerl bus add-actor`).
    shared_actor_credential: bool | None = None
    # Actor ids given a credential of their own at start; more are added with `tracerl bus add-actor`.
    actors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 0 <= self.monitor_port <= 65535:
            raise ValueError(f"monitor_port must be in [0, 65535], got {self.monitor_port}")
        # nats-server refuses payloads above 64 MiB; below 1 MiB object-store chunks do not fit.
        if not MIB <= self.max_payload <= 64 * MIB:
            raise ValueError(f"max_payload must be in [1 MiB, 64 MiB], got {self.max_payload}")
        if self.startup_timeout_s <= 0:
            raise ValueError("startup_timeout_s must be > 0")
        if self.max_store_mib < 0:
            raise ValueError(f"max_store_mib must be >= 0, got {self.max_store_mib}")
        # nats-server reserves every stream's byte cap from the store limit when it creates the
        # stream: caps past the limit would fail at provisioning with "insufficient storage".
        capped = self.streams.nodes_max_bytes + self.streams.trees_max_bytes + self.streams.dead_letter_max_bytes
        if self.max_store_mib and capped >= self.max_store_mib * MIB:
            raise ValueError(
                f"the streams' byte caps ({capped // MIB} MiB: streams.nodes_max_bytes, trees_max_bytes, "
                f"dead_letter_max_bytes) must leave room within max_store_mib={self.max_store_mib}"
            )
        check_run_id(self.run.run_id)
        for run_id in self.extra_run_ids:
            check_run_id(run_id)
        for actor_id in self.actors:
            if not _NAME.match(actor_id):
                raise ValueError(f"actors entry {actor_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if self.streams.replicas > self.cluster.size:
            raise ValueError(
                f"streams.replicas={self.streams.replicas} needs at least that many nodes; "
                f"the cluster has {self.cluster.size}"
            )

    @property
    def replicas(self) -> int:
        """Copies provisioned per stream and bucket, with ``streams.replicas: 0`` decided here."""
        if self.streams.replicas:
            return self.streams.replicas
        return DEFAULT_CLUSTER_REPLICAS if self.cluster.size >= DEFAULT_CLUSTER_REPLICAS else 1

    @property
    def stream_limits(self) -> StreamLimits:
        """``streams`` with the replica count resolved; what provisioning must use."""
        return replace(self.streams, replicas=self.replicas)

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys([self.run.run_id, *self.extra_run_ids]))

    @property
    def store_path(self) -> Path:
        return Path(self.store_dir) if self.store_dir else Path(self.run.run_dir) / "nats"

    @property
    def beyond_loopback(self) -> bool:
        """Whether hosts other than this one can reach the bus (clients or cluster routes)."""
        hosts = [self.host, *([self.cluster.route_host or self.host] if self.cluster.enabled else [])]
        return not all(is_loopback(host) for host in hosts)

    @property
    def tls_enabled(self) -> bool:
        return self.beyond_loopback if self.tls is None else self.tls

    @property
    def shared_actor_enabled(self) -> bool:
        return not self.beyond_loopback if self.shared_actor_credential is None else self.shared_actor_credential


def is_loopback(host: str) -> bool:
    """Whether a listen address keeps the bus on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
