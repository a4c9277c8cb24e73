"""Uniform stage 1 and GRPO: ``group_size`` rollouts for each of as many random prompts as
the budget pays for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..step import Issue, StepState
from .base import roots_round

if TYPE_CHECKING:
    from ..core import AllocatorCore


class UniformRoots:
    def plan_roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> list[Issue]:
        cfg = core.config
        groups = rollouts // cfg.group_size
        pool = core.draw_pool(step, max(1, groups))
        counts = [cfg.group_size] * len(pool) if groups else []
        return roots_round(core, step, pool, counts)
