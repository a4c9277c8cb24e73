"""Typed configuration of the `tracerl bus` role (nats-server launcher and provisioning)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from protocol import replace
from protocol.subjects import check_run_id
from tracerl.config import AtLeast0, AtLeast1, Config, LogConfig, Positive, RunConfig

MIB = 1024 * 1024
GIB = 1024 * MIB
MAX_REPLICAS = 5
DEFAULT_CLUSTER_REPLICAS = 3
# A cluster, node or actor name; empty where the field is optional.
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
NameOrEmpty = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")]
Port = Annotated[int, Meta(ge=0, le=65535)]


class StreamLimits(Config, frozen=True):
    """Durable-consumer and retention settings applied by provisioning."""

    # A work item or node not acked within ack_wait goes back to another consumer.
    ack_wait_s: Positive = 30.0
    # After this many deliveries a message is treated as poisoned and moved to the DLQ.
    max_deliver: AtLeast1 = 5
    # Nodes, trees and DLQ copies are kept this long (they are also useful for replay).
    max_age_s: Positive = 7 * 24 * 3600.0
    # Byte caps of the same streams (0: none); past a cap the oldest messages go. A restarted
    # allocator must never find a node whose tree is gone (it would reopen that tree), and a
    # tree holds copies of its nodes, so the trees' cap is at least twice the nodes'.
    # JetStream reserves each cap in the server's file-store budget when the stream is made,
    # so the caps also limit how many runs one server can hold.
    nodes_max_bytes: AtLeast0 = 512 * MIB
    trees_max_bytes: AtLeast0 = 1 * GIB
    dead_letter_max_bytes: AtLeast0 = 64 * MIB
    # Per-actor work consumers that see no actor for this long are removed by the server.
    actor_consumer_inactive_s: Positive = 3600.0
    duplicate_window_s: Annotated[float, Meta(ge=0)] = 120.0
    # Copies of every stream and bucket (JetStream allows 1 to 5). 0 means "decided by the
    # bus": 3 on a cluster of at least 3 nodes, so losing any one node loses nothing, else 1.
    replicas: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 0

    def __post_init__(self) -> None:
        if self.trees_max_bytes and not (self.nodes_max_bytes and self.trees_max_bytes >= 2 * self.nodes_max_bytes):
            raise ValueError(
                "streams.trees_max_bytes needs a streams.nodes_max_bytes of at most half of it: "
                "trees must outlive their nodes"
            )

    @property
    def num_replicas(self) -> int:
        """The replica count provisioning asks for; an undecided 0 provisions one copy."""
        return self.replicas or 1


class ClusterConfig(Config, frozen=True):
    """Routes between nats-servers, so that JetStream replicates and clients can fail over.

    Two ways to use it:

    - ``local_nodes: 3`` (dev and tests): one ``tracerl bus`` starts three nodes on this
      host, on consecutive client, monitor and route ports (or free ones when a port is 0).
    - one node per host: ``name`` the same everywhere, a distinct ``node_name``, and
      ``routes`` listing the peers' route URLs. The first node generates the credentials;
      every other node sets ``join: true`` and needs a copy of ``<run_dir>/credentials``.
    """

    # Empty means "not clustered": a single nats-server, as without this section.
    name: NameOrEmpty = ""
    # This node's JetStream server name, unique in the cluster (required with routes;
    # local nodes are named "<name>-n0", "<name>-n1", ...).
    node_name: NameOrEmpty = ""
    # Address this node's route listener binds, which its peers dial; empty means the bus's host.
    route_host: str = ""
    route_port: Port = 6222
    # The other nodes' route URLs, e.g. nats-route://10.0.0.2:6222; their count sizes the cluster.
    routes: list[str] = msgspec.field(default_factory=list)
    # Start this many nodes in this process (0: just this one node).
    local_nodes: AtLeast0 = 0
    # A joining node reuses the run's credentials and leaves provisioning to the first node.
    join: bool = False
    # How long the first node waits for enough peers to place replicated streams (time
    # enough to copy its credentials to the other hosts and start them there).
    form_timeout_s: Positive = 300.0

    def __post_init__(self) -> None:
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


class BusServerConfig(Config, frozen=True):
    """The nats-server (or cluster nodes) with JetStream for a run, plus its credentials and streams."""

    run: RunConfig = RunConfig()
    log: LogConfig = LogConfig()
    streams: StreamLimits = StreamLimits()
    host: str = "127.0.0.1"
    port: Port = 4222
    # HTTP monitoring, used for readiness and reload checks; always on loopback.
    # For both ports, 0 means "a free port chosen at start".
    monitor_port: Port = 8222
    # Soft memory limit (GOMEMLIMIT) of each nats-server node, in MiB; 0 leaves it unbounded.
    # Most of nats-server's heap is the file store's block caches (up to 8 MiB per block written
    # or read in the last seconds), which its GC may drop under this limit; without it the heap
    # target is twice that working set and resident memory ratchets up with the largest bursts
    # (weights publications and fetches). Raise it with the weights: it must stay above what
    # nats-server cannot drop, or its GC runs all the time.
    memory_limit_mib: AtLeast0 = 128
    # nats-server's Go profiler (/debug/pprof, e.g. heap?debug=1) on this port, first node only; 0 is off.
    profile_port: Port = 0
    # Empty means "<run_dir>/nats".
    store_dir: str = ""
    # nats-server refuses payloads above 64 MiB; below 1 MiB object-store chunks do not fit.
    max_payload: Annotated[int, Meta(ge=MIB, le=64 * MIB)] = 8 * MIB
    # JetStream's file store limit on each node, in MiB; 0 leaves it to nats-server (a share of
    # the free disk). Publishes past it are refused rather than filling the disk.
    max_store_mib: AtLeast0 = 0
    # Further run ids served by the same server (several runs may share one deployment).
    extra_run_ids: list[str] = msgspec.field(default_factory=list)
    # Empty means "<venv>/bin/nats-server next to this Python, else nats-server on PATH".
    server_binary: str = ""
    startup_timeout_s: Positive = 15.0
    cluster: ClusterConfig = ClusterConfig()
    # Serve TLS with a certificate from the run's own CA (clients verify it with the CA in
    # their credentials file). Unset means: on whenever the bus listens beyond loopback.
    tls: bool | None = None
    # Further names or addresses clients use to reach the bus (a DNS name, a public address),
    # added to the server certificate besides the listen and route hosts and this hostname.
    tls_hosts: list[str] = msgspec.field(default_factory=list)
    # The one `actor` credential any actor may use, publishing as any actor id. Unset means:
    # only on loopback; beyond it each actor has its own (`actors`, `tracerl bus add-actor`).
    shared_actor_credential: bool | None = None
    # Actor ids given a credential of their own at start; more are added with `tracerl bus add-actor`.
    actors: list[Name] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
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
