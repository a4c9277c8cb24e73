"""Typed configuration of the `tracerl allocator` role."""

from __future__ import annotations

from allocator.core import AllocatorCoreConfig
from allocator.heldout import HeldoutConfig
from tracerl.config import AtLeast0, AtLeast1, BusConfig, Config, LogConfig, Positive, RunConfig


class TaskPoolConfig(Config, frozen=True):
    """Where training prompts come from: generated tasks of one environment."""

    env: str = "multihop"
    train_tasks: AtLeast1 = 2048
    seed: int = 0


class AllocatorConfig(Config, frozen=True):
    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
    core: AllocatorCoreConfig = AllocatorCoreConfig()
    tasks: TaskPoolConfig = TaskPoolConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    # How often the scheduler runs and how often the actor registry is re-read.
    schedule_interval_s: Positive = 0.05
    registry_interval_s: Positive = 1.0
    # An actor whose last heartbeat is older than this is treated as gone.
    actor_timeout_s: Positive = 15.0
    metrics_interval_s: Positive = 5.0
    # Stop after emitting the trees of this many steps (0: run until stopped).
    max_steps: AtLeast0 = 0
