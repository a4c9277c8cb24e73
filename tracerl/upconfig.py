"""Typed configuration of `tracerl up`: one run, every role's config inside it.

Kept apart from ``tracerl.up`` so that the CLI can describe it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.config import ActorConfig
from allocator.config import AllocatorConfig
from bus.config import BusServerConfig
from learner.config import LearnerConfig
from modelkit.config import ModelBuildConfig
from tracerl.config import LogConfig, RunConfig, WeightsConfig
from tracerl.supervisor import parse_cpu_list


@dataclass(frozen=True)
class CpuPinning:
    """Core lists per role ('0', '0-1', '' = unpinned). Separate cores for the learner and
    the actors stand in for dedicated GPUs on a CPU-only machine."""

    learner: str = ""
    actors: str = ""
    allocator: str = ""
    bus: str = ""

    def __post_init__(self) -> None:
        for name in ("learner", "actors", "allocator", "bus"):
            parse_cpu_list(getattr(self, name))


@dataclass(frozen=True)
class UpConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(run_id="default", run_dir="runs/default"))
    log: LogConfig = field(default_factory=LogConfig)
    bus: BusServerConfig = field(default_factory=lambda: BusServerConfig(port=0, monitor_port=0))
    # An HF-format model directory; empty means "build (or reuse) the embedded tiny model".
    model_dir: str = ""
    model: ModelBuildConfig = field(default_factory=ModelBuildConfig)
    num_actors: int = 1
    # How weights reach the actors; the learner and every actor get this section.
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cpus: CpuPinning = field(default_factory=CpuPinning)
    # Held-out tasks for the before/after `tracerl eval` (0 skips both evaluations).
    eval_tasks: int = 100
    # The run stops when the learner has taken learner.training.max_steps steps, or after this.
    timeout_s: float = 900.0
    progress_interval_s: float = 5.0
    startup_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.num_actors < 0:
            raise ValueError("num_actors must be >= 0")
        if self.timeout_s <= 0 or self.progress_interval_s <= 0:
            raise ValueError("timeout_s and progress_interval_s must be > 0")
