"""TRACE: both stages planned from the shared success predictor.

Stage 1 (``RootsJob``): the exact DP spreads the root budget over a candidate pool
``pool_factor`` times a uniform batch, maximising the expected number of mixed groups.
Stage 2 (``BranchesJob``): every branchable prefix whose leaves are unanimous gets up to
``branch_k`` continuations by the greedy on V_pref per turn.

Why in slices: with a pool of thousands of prompts and a budget of thousands of rollouts,
scoring and the exact DP take tens of milliseconds, and the scheduler tick that does them
must stay within a few milliseconds (``schedule`` is also where timeouts, step opening and
hand-out happen). Each slice is sized by the units left in the call, and the round planned
does not depend on how the work was sliced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from protocol import TaskSpec

from ..allocation import PrefixGreedy, RootsDP
from ..step import Issue, StepState
from ..tree import NodeState, RolloutTree
from .base import starts_or_fits

if TYPE_CHECKING:
    from ..core import AllocatorCore

# What planning costs, in units (see strategies/base.py); a prediction costs what the
# outcome model says (core.outcomes.PREDICT_UNITS).
_UNITS_DRAW_PER_TASK = 0.1  # a pool draw, per task in the task pool
_UNITS_SCAN = 1.5  # a node checked for branchability
_UNITS_ALLOCATE = 0.3  # a candidate in the stage-2 greedy's final merge
_UNITS_EMIT = 2.5  # a planned item wrapped for the queue
_UNITS_TRACE = 4  # a prompt of the root DP's trace-back
_DP_CELLS_PER_UNIT = 450  # root-DP table cells computed per unit


class TraceRoots:
    def plan_roots(self, core: AllocatorCore, step: StepState, rollouts: int) -> RootsJob:
        return RootsJob(rollouts)


class TraceBranches:
    def plan_branches(self, core: AllocatorCore, step: StepState) -> BranchesJob:
        return BranchesJob()


@dataclass
class RootsJob:
    """TRACE stage 1 being planned: draw the pool, score it, run the DP, wrap the items."""

    rollouts: int
    pool: list[TaskSpec] | None = None
    values: list[float] = field(default_factory=list)
    revision: int = -1
    dp: RootsDP | None = None
    counts: list[int] | None = None
    plan: list[Issue] = field(default_factory=list)
    emitted: int = 0

    def advance(self, core: AllocatorCore, step: StepState, units: float) -> tuple[list[Issue] | None, float]:
        cfg = core.config
        if self.pool is None:
            cost = _UNITS_DRAW_PER_TASK * len(core.task_pool)
            if not starts_or_fits(core, cost, units):
                return None, 0.0
            groups = self.rollouts // cfg.group_size
            self.pool = core.draw_pool(step, max(1, groups) * cfg.pool_factor)
            return None, units - cost
        if self.dp is None and self.revision != core.outcomes.revision:
            # Every score of a round comes from one model: a step closing mid-plan retrains it.
            self.revision, self.values = core.outcomes.revision, []
        if len(self.values) < len(self.pool):
            values, units = core.outcomes.score_roots(self.pool[len(self.values) :], units)
            self.values.extend(values)
            return None, units
        if self.dp is None:
            strengths = core.outcomes.root_strengths(self.pool)
            self.dp = RootsDP.start(
                self.values, self.rollouts, cfg.max_per_prompt, strengths, cfg.min_per_prompt, cfg.root_objective
            )
        dp = self.dp
        if not dp.all_added:
            row_units = dp.cells_per_prompt / _DP_CELLS_PER_UNIT
            before = dp.added
            dp.add(max(1, int(units / row_units)))
            return None, units - (dp.added - before) * row_units
        if not dp.finished:
            before = dp.traced
            dp.trace(max(1, int(units / _UNITS_TRACE)))
            return None, units - (dp.traced - before) * _UNITS_TRACE
        if self.counts is None:
            self.counts = dp.allocation()
            core.stage1_log.append((step.index, tuple(t.task_id for t in self.pool), tuple(self.counts)))
        start, end = self.emitted, min(len(self.pool), self.emitted + max(1, int(units / _UNITS_EMIT)))
        for task, m in zip(self.pool[start:end], self.counts[start:end], strict=True):
            if m >= 1:
                self.plan.append(core.root_item(step, task, m))
        self.emitted = end
        return (self.plan if end == len(self.pool) else None), units - _UNITS_EMIT * (end - start)


@dataclass
class BranchesJob:
    """A TRACE stage-2 round being planned: gather candidates tree by tree, score the ones
    whose cached prediction is stale, run the vectorised greedy, wrap the items."""

    trees_scanned: int = 0
    candidates: list[tuple[RolloutTree, NodeState]] = field(default_factory=list)
    outcome: list[float] = field(default_factory=list)
    cost: list[int] = field(default_factory=list)
    scored: int = 0
    revision: int = -1
    greedy: PrefixGreedy = field(default_factory=PrefixGreedy)
    chosen: list[int] | None = None  # candidates given continuations, and how many each
    continuations: list[int] = field(default_factory=list)
    plan: list[Issue] = field(default_factory=list)

    def advance(self, core: AllocatorCore, step: StepState, units: float) -> tuple[list[Issue] | None, float]:
        cfg = core.config
        if self.trees_scanned < len(step.tree_ids):
            for tree_id in step.tree_ids[self.trees_scanned :]:
                if units <= 0:
                    break
                self.trees_scanned += 1
                tree = core.trees.get(tree_id)
                if tree is None:
                    continue
                units -= _UNITS_SCAN * len(tree.nodes)
                for state in core.tree_candidates(tree):
                    if state.successes in (0, state.leaves):
                        self.candidates.append((tree, state))
                        self.outcome.append(1.0 if state.successes == state.leaves else 0.0)
                        self.cost.append(cfg.max_turns - state.node.depth)
            return None, units
        n = len(self.candidates)
        revision = core.outcomes.revision
        if self.chosen is None and self.revision != revision:
            # As in RootsJob; predictions cached on the nodes at this revision are kept.
            self.revision, self.scored, self.greedy = revision, 0, PrefixGreedy()
        if self.scored < n:
            start, end = self.scored, min(n, self.scored + max(1, int(units / core.outcomes.PREDICT_UNITS)))
            chunk = self.candidates[start:end]
            values, scoring = core.outcomes.predict_prefixes(chunk)
            # Ranked by expected mixed outcomes per expected turn; reserved at the full horizon.
            self.greedy.add(
                np.asarray(self.outcome[start:end], dtype=np.float64),
                values,
                np.asarray(self.cost[start:end], dtype=np.int64),
                np.full(len(chunk), cfg.branch_k, dtype=np.int64),
                # The belief already counts every leaf of earlier continuations.
                np.zeros(len(chunk), dtype=np.int64),
                strength=core.outcomes.prefix_strengths(chunk),
                rank_cost=np.fromiter(
                    (core.outcomes.expected_turns(state.node.depth) for _, state in chunk),
                    dtype=np.float64,
                    count=len(chunk),
                ),
            )
            self.scored = end
            return None, units - scoring - _UNITS_SCAN * len(chunk)
        if self.chosen is None:
            cost = _UNITS_ALLOCATE * n
            if not starts_or_fits(core, cost, units):
                return None, 0.0
            counts = self.greedy.allocate(step.budget.available)
            chosen = np.flatnonzero(counts)
            self.chosen, self.continuations = chosen.tolist(), counts[chosen].tolist()
            return None, units - cost
        start = len(self.plan)
        end = min(len(self.chosen), start + max(1, int(units / _UNITS_EMIT)))
        for i, k in zip(self.chosen[start:end], self.continuations[start:end], strict=True):
            tree, state = self.candidates[i]
            self.plan.append(core.branch_item(step, tree, state, k))
        units -= _UNITS_EMIT * (end - start)
        return (self.plan if end == len(self.chosen) else None), units
