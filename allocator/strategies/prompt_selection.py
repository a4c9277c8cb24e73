"""Stage 1 by prompt selection: ``gps`` picks prompts whose predicted success is near 0.5,
kept diverse; ``dps`` picks by each prompt's HMM belief of being mixed next. Both give
``group_size`` rollouts to each pick from a pool ``pool_factor`` times the batch, and run
the stage 2 that ``allocator.core.stage2`` names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..selection import select_dps, select_gps
from ..step import Issue, StepState
from .base import roots_round

if TYPE_CHECKING:
    from ..core import AllocatorCore


class GPSRoots:
    def plan_roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> list[Issue]:
        cfg = core.config
        groups = rollouts // cfg.group_size
        pool = core.draw_pool(step, max(1, groups) * cfg.pool_factor)
        values = core.outcomes.predict_roots(pool)
        embeddings = core.outcomes.prompt_embeddings(pool)
        chosen = set(select_gps(values, embeddings, groups, cfg.gps_diversity))
        counts = [cfg.group_size if i in chosen else 0 for i in range(len(pool))]
        return roots_round(core, step, pool, counts)


class DPSRoots:
    def plan_roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> list[Issue]:
        cfg = core.config
        groups = rollouts // cfg.group_size
        pool = core.draw_pool(step, max(1, groups) * cfg.pool_factor)
        chosen = set(select_dps(core.outcomes.mixed_probabilities(pool), groups, core.rng))
        counts = [cfg.group_size if i in chosen else 0 for i in range(len(pool))]
        return roots_round(core, step, pool, counts)
