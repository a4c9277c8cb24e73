"""Typed configuration of the `tracerl bus` role (nats-server launcher and provisioning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol.subjects import check_run_id
from tracerl.config import LogConfig, RunConfig

MIB = 1024 * 1024


@dataclass(frozen=True)
class StreamLimits:
    """Durable-consumer and retention settings applied by provisioning."""

    # A work item or node not acked within ack_wait goes back to another consumer.
    ack_wait_s: float = 30.0
    # After this many deliveries a message is treated as poisoned and moved to the DLQ.
    max_deliver: int = 5
    # Nodes, trees and DLQ copies are kept this long (they are also useful for replay).
    max_age_s: float = 7 * 24 * 3600.0
    # Per-actor work consumers that see no actor for this long are removed by the server.
    actor_consumer_inactive_s: float = 3600.0
    duplicate_window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.ack_wait_s <= 0:
            raise ValueError("streams.ack_wait_s must be > 0")
        if self.max_deliver < 1:
            raise ValueError("streams.max_deliver must be >= 1")
        if self.max_age_s <= 0:
            raise ValueError("streams.max_age_s must be > 0")
        if self.actor_consumer_inactive_s <= 0:
            raise ValueError("streams.actor_consumer_inactive_s must be > 0")
        if self.duplicate_window_s < 0:
            raise ValueError("streams.duplicate_window_s must be >= 0")


@dataclass(frozen=True)
class BusServerConfig:
    """One nats-server with JetStream for a run, plus the credentials and streams of that run."""

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
    # Further run ids served by the same server (several runs may share one deployment).
    extra_run_ids: list[str] = field(default_factory=list)
    # Empty means "<venv>/bin/nats-server next to this Python, else nats-server on PATH".
    server_binary: str = ""
    startup_timeout_s: float = 15.0

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
        check_run_id(self.run.run_id)
        for run_id in self.extra_run_ids:
            check_run_id(run_id)

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys([self.run.run_id, *self.extra_run_ids]))

    @property
    def store_path(self) -> Path:
        return Path(self.store_dir) if self.store_dir else Path(self.run.run_dir) / "nats"

    @property
    def credentials_dir(self) -> Path:
        return Path(self.run.run_dir) / "credentials"
