"""Allocation strategies, one module per method family, behind the planner protocol of
``base.py``; ``STRATEGIES`` names each one (``allocator.core.strategy``) and builds its
planner from the config."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .base import BranchPlanner, PlanJob, Planner, RootPlanner, TwoStage
from .branching import EntropyBranches, RandomBranches, turn_entropy
from .prompt_selection import DPSRoots, GPSRoots
from .search import Search
from .trace import TraceBranches, TraceRoots
from .uniform import UniformRoots

if TYPE_CHECKING:
    from ..core import AllocatorCoreConfig

# The stage 2 that gps and dps run after their prompt selection (``allocator.core.stage2``).
STAGE2: dict[str, Callable[[], BranchPlanner | None]] = {
    "none": lambda: None,
    "trace": TraceBranches,
    "tree-random": RandomBranches,
    "entropy": EntropyBranches,
}

STRATEGIES: dict[str, Callable[[AllocatorCoreConfig], Planner]] = {
    "grpo": lambda config: TwoStage(UniformRoots()),
    "tree-random": lambda config: TwoStage(UniformRoots(), RandomBranches()),
    "entropy": lambda config: TwoStage(UniformRoots(), EntropyBranches()),
    "gps": lambda config: TwoStage(GPSRoots(), STAGE2[config.stage2]()),
    "dps": lambda config: TwoStage(DPSRoots(), STAGE2[config.stage2]()),
    "tsr-bon": lambda config: Search(),
    "tsr-beam": lambda config: Search(beam=True),
    "tsr-lookahead": lambda config: Search(lookahead_turns=config.tsr_lookahead_turns),
    "trace": lambda config: TwoStage(TraceRoots(), TraceBranches()),
    # TRACE's stages one at a time, for the decomposition of what each adds: the root DP
    # alone (refunds go to further DP-chosen groups), and uniform roots with TRACE's stage 2.
    "trace-roots": lambda config: TwoStage(TraceRoots()),
    "trace-prefixes": lambda config: TwoStage(UniformRoots(), TraceBranches()),
}


def planner_for(config: AllocatorCoreConfig) -> Planner:
    return STRATEGIES[config.strategy](config)


__all__ = [
    "STAGE2",
    "STRATEGIES",
    "BranchPlanner",
    "PlanJob",
    "Planner",
    "RootPlanner",
    "TwoStage",
    "planner_for",
    "turn_entropy",
]
