"""The planner protocol: how a strategy plans the rounds of a step.

The core (allocator/core.py) runs every step's lifecycle. Whenever a step has no work
outstanding, it asks the strategy's ``Planner`` for the next round: a list of ``Issue``s,
each of which builds, reserves and registers one WorkItem when the core hands it out. An
empty round closes the step. A round too costly to plan within one ``schedule`` call comes
back as a ``PlanJob`` instead, which the core advances a slice per call.

Planning cost is counted in units of about a microsecond on a small x86 core. A call spends
at most ``AllocatorCoreConfig.plan_units_per_call`` of them (plus one piece that cannot be
split), so the costs a job charges only need to be right to within a factor of about two.

Most strategies have two stages: stage 1 decides how many rollouts each prompt of a
candidate pool gets (a ``RootPlanner``), stage 2 branches from prefixes of the step's trees
(a ``BranchPlanner``); ``TwoStage`` runs them in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from protocol import TaskSpec

from ..step import Issue, StepState

if TYPE_CHECKING:
    from ..core import AllocatorCore


class PlanJob(Protocol):
    def advance(self, core: AllocatorCore, step: StepState, units: float) -> tuple[list[Issue] | None, float]:
        """Plan one slice with about ``units`` of work at most: the whole round once it is
        planned, else None; and the units left."""
        ...


class Planner(Protocol):
    def start_round(self, core: AllocatorCore, step: StepState, now: float) -> list[Issue] | PlanJob:
        """The next round of ``step`` (empty to close it), or a job that plans it in slices."""
        ...


class RootPlanner(Protocol):
    def plan_roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> list[Issue] | PlanJob:
        """Stage 1: spread about ``rollouts`` full-horizon rollouts over new prompts."""
        ...


class BranchPlanner(Protocol):
    def plan_branches(self, core: AllocatorCore, step: StepState) -> list[Issue] | PlanJob:
        """Stage 2: continuations from prefixes of the step's trees, within its budget."""
        ...


@dataclass(frozen=True)
class TwoStage:
    """Stage 1 first; then, while the step has budget, stage-2 rounds. Without a stage 2,
    the step spends what chains refund (by ending early) on further root groups."""

    roots: RootPlanner
    branches: BranchPlanner | None = None

    def start_round(self, core: AllocatorCore, step: StepState, now: float) -> list[Issue] | PlanJob:
        cfg = core.config
        if not step.roots_issued:
            step.roots_issued = True
            turns = step.budget.available
            if self.branches is not None:
                turns = int(cfg.root_fraction * cfg.step_budget_turns)
            return self._roots(core, step, turns // cfg.max_turns)
        if self.branches is None:
            # Stage-1-only strategies spend refunds on further root groups: equal cost.
            return self._roots(core, step, step.budget.available // cfg.max_turns)
        return self.branches.plan_branches(core, step)

    def _roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> list[Issue] | PlanJob:
        if rollouts < 2:
            return []
        return self.roots.plan_roots(core, step, rollouts)


def roots_round(core: AllocatorCore, step: StepState, pool: Sequence[TaskSpec], counts: Sequence[int]) -> list[Issue]:
    """The root items of a stage-1 decision (``counts[i]`` rollouts of ``pool[i]``), which
    is kept in ``core.stage1_log``."""
    core.stage1_log.append((step.index, tuple(t.task_id for t in pool), tuple(counts)))
    # No counts at all when the budget pays for no group: the pool is drawn anyway, to keep draws paired.
    return [core.root_item(step, task, m) for task, m in zip(pool, counts, strict=False) if m >= 1]


def starts_or_fits(core: AllocatorCore, cost: float, units: float) -> bool:
    """Whether a piece of planning that cannot be split runs now: when it fits in the units
    left, or first thing in a call (else it waits for the next call)."""
    return cost <= units or units >= core.config.plan_units_per_call
