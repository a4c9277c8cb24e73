"""Typed configuration of the `tracerl allocator` role."""

from __future__ import annotations

from dataclasses import dataclass, field

from allocator.core import AllocatorCoreConfig
from allocator.heldout import HeldoutConfig
from allocator.shard import ShardConfig, shard_share, shard_step
from tracerl.config import BusConfig, LogConfig, RunConfig


@dataclass(frozen=True)
class TaskPoolConfig:
    """Where training prompts come from: generated tasks of one environment."""

    env: str = "multihop"
    train_tasks: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.train_tasks < 1:
            raise ValueError("tasks.train_tasks must be >= 1")


@dataclass(frozen=True)
class AllocatorConfig:
    run: RunConfig = field(default_factory=RunConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    core: AllocatorCoreConfig = field(default_factory=AllocatorCoreConfig)
    tasks: TaskPoolConfig = field(default_factory=TaskPoolConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    # Which of ``count`` allocator processes this is; each plans its own prompts with its share
    # of ``core``'s step (allocator.shard). `tracerl up` starts ``count`` of them.
    shard: ShardConfig = field(default_factory=ShardConfig)
    # How often the scheduler runs and how often the actor registry is re-read.
    schedule_interval_s: float = 0.05
    registry_interval_s: float = 1.0
    # An actor whose last heartbeat is older than this is treated as gone.
    actor_timeout_s: float = 15.0
    metrics_interval_s: float = 5.0
    # Stop after emitting the trees of this many steps (0: run until stopped).
    max_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule_interval_s <= 0 or self.registry_interval_s <= 0 or self.metrics_interval_s <= 0:
            raise ValueError("allocator intervals must be > 0")
        if self.actor_timeout_s <= 0:
            raise ValueError("actor_timeout_s must be > 0")
        if self.max_steps < 0:
            raise ValueError("max_steps must be >= 0")
        for index in range(self.shard.count):
            share = shard_share(self.core.step_budget_turns, ShardConfig(index, self.shard.count))
            if share < 2 * self.core.max_turns:
                raise ValueError(
                    f"allocator.core.step_budget_turns={self.core.step_budget_turns} split over "
                    f"{self.shard.count} shards leaves shard {index} {share} turns, fewer than two full rollouts"
                )

    @property
    def shard_core(self) -> AllocatorCoreConfig:
        """``core`` with this shard's share of the step."""
        return shard_step(self.core, self.shard)
