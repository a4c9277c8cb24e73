"""Typed configuration of the `tracerl allocator` role."""

from __future__ import annotations

import msgspec

from allocator.core import AllocatorCoreConfig
from allocator.heldout import HeldoutConfig
from allocator.shard import ShardConfig, shard_share, shard_step
from environments.registry import check_task_options
from tracerl.config import AtLeast0, AtLeast1, BusConfig, Config, LogConfig, Positive, RunConfig


class TaskPoolConfig(Config, frozen=True):
    """Where training prompts come from: generated tasks of one environment."""

    env: str = "multihop"
    train_tasks: AtLeast1 = 2048
    seed: int = 0
    # Keywords of the environment's task generator for the training pool
    # (``environments.registry.task_options``): difficulty knobs (multihop's ``min_hops``,
    # say, for a harder training mix) or a real dataset's files. Held-out tasks take theirs
    # from ``heldout.options``, so a harder mix can still be scored on the standard one.
    options: dict[str, int | float | str | bool] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_task_options(self.env, self.options)


class AllocatorConfig(Config, frozen=True):
    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
    core: AllocatorCoreConfig = AllocatorCoreConfig()
    tasks: TaskPoolConfig = TaskPoolConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    # Which of ``count`` allocator processes this is; each plans its own prompts with its share
    # of ``core``'s step (allocator.shard). `tracerl up` starts ``count`` of them.
    shard: ShardConfig = ShardConfig()
    # How often the scheduler runs and how often the actor registry is re-read.
    schedule_interval_s: Positive = 0.05
    registry_interval_s: Positive = 1.0
    # An actor whose last heartbeat is older than this is treated as gone.
    actor_timeout_s: Positive = 15.0
    metrics_interval_s: Positive = 5.0
    # Stop after emitting the trees of this many steps (0: run until stopped).
    max_steps: AtLeast0 = 0

    def __post_init__(self) -> None:
        check_task_options(self.tasks.env, self.heldout.options)
        for index in range(self.shard.count):
            share = shard_share(self.core.step_budget_turns, ShardConfig(index=index, count=self.shard.count))
            if share < 2 * self.core.max_turns:
                raise ValueError(
                    f"allocator.core.step_budget_turns={self.core.step_budget_turns} split over "
                    f"{self.shard.count} shards leaves shard {index} {share} turns, fewer than two full rollouts"
                )

    @property
    def shard_core(self) -> AllocatorCoreConfig:
        """``core`` with this shard's share of the step."""
        return shard_step(self.core, self.shard)
