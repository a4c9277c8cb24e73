"""Typed configuration of `tracerl up`: one run, every role's config inside it.

Kept apart from ``tracerl.up`` so that the CLI can describe it without importing torch.
"""

from __future__ import annotations

from actors.config import ActorConfig
from allocator.config import AllocatorConfig
from bus.config import BusServerConfig
from learner.config import LearnerConfig
from modelkit.config import ModelBuildConfig
from tracerl.config import AtLeast0, Config, LogConfig, Positive, RunConfig, WeightsConfig
from tracerl.supervisor import parse_cpu_list


class CpuPinning(Config, frozen=True):
    """Core lists per role ('0', '0-1', '' = unpinned). Separate cores for the learner and
    the actors stand in for dedicated GPUs on a CPU-only machine."""

    learner: str = ""
    actors: str = ""
    allocator: str = ""
    bus: str = ""

    def __post_init__(self) -> None:
        for name in ("learner", "actors", "allocator", "bus"):
            parse_cpu_list(getattr(self, name))


class UpConfig(Config, frozen=True):
    run: RunConfig = RunConfig(run_id="default", run_dir="runs/default")
    log: LogConfig = LogConfig()
    bus: BusServerConfig = BusServerConfig(port=0, monitor_port=0)
    # An HF-format model directory; empty means "build (or reuse) the embedded tiny model".
    model_dir: str = ""
    model: ModelBuildConfig = ModelBuildConfig()
    num_actors: AtLeast0 = 1
    # How weights reach the actors; the learner and every actor get this section.
    weights: WeightsConfig = WeightsConfig()
    actor: ActorConfig = ActorConfig()
    allocator: AllocatorConfig = AllocatorConfig()
    learner: LearnerConfig = LearnerConfig()
    cpus: CpuPinning = CpuPinning()
    # Held-out tasks for the before/after `tracerl eval` (0 skips both evaluations).
    eval_tasks: int = 100
    # The run stops when the learner has taken learner.training.max_steps steps, or after this.
    timeout_s: Positive = 900.0
    progress_interval_s: Positive = 5.0
    startup_timeout_s: float = 180.0
