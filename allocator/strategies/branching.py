"""Stage-2 branching without a predictor, after uniform roots: Tree-GRPO-style random
expansion (``tree-random``) and ARPO-style branching after a rise in token entropy
(``entropy``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from protocol import TurnNode

from ..step import Issue, StepState
from ..tree import NodeState, RolloutTree

if TYPE_CHECKING:
    from ..core import AllocatorCore


def turn_entropy(node: TurnNode) -> float:
    """Mean -logprob of the sampled tokens: an unbiased estimate of the turn's token entropy."""
    if not node.behaviour_logprobs:
        return 0.0
    return -float(sum(node.behaviour_logprobs)) / len(node.behaviour_logprobs)


class RandomBranches:
    """Every branchable prefix not branched before, in random order."""

    def plan_branches(self, core: AllocatorCore, step: StepState) -> list[Issue]:
        candidates = core.branch_candidates(step)
        fresh = [(t, s) for t, s in candidates if s.expansions == 0]
        order = core.rng.permutation(len(fresh))
        return _fill(core, step, [fresh[i] for i in order])


class EntropyBranches:
    """Branchable prefixes not branched before whose last turn's entropy rose above its
    parent's (the mean of the first turns for a first turn) by more than ``entropy_rise``,
    largest rise first."""

    def plan_branches(self, core: AllocatorCore, step: StepState) -> list[Issue]:
        rises = []
        for tree, state in core.branch_candidates(step):
            if state.expansions:
                continue
            parent_id = state.node.parent_id
            if parent_id is None:
                siblings = [tree.nodes[i].node for i in tree.first_turns]
                reference = sum(turn_entropy(n) for n in siblings) / len(siblings)
            else:
                reference = turn_entropy(tree.nodes[parent_id].node)
            rise = turn_entropy(state.node) - reference
            if rise > core.config.entropy_rise:
                rises.append((rise, tree, state))
        rises.sort(key=lambda r: -r[0])
        return _fill(core, step, [(t, s) for _, t, s in rises])


def _fill(core: AllocatorCore, step: StepState, ordered: Iterable[tuple[RolloutTree, NodeState]]) -> list[Issue]:
    """``branch_k`` continuations (fewer if that is all the budget pays for) from each
    prefix in order, while the step's budget lasts."""
    budget = step.budget.available
    plan = []
    for tree, state in ordered:
        cost = core.config.max_turns - state.node.depth
        k = min(core.config.branch_k, budget // cost)
        if k < 1:
            continue
        plan.append(core.branch_item(step, tree, state, k))
        budget -= k * cost
    return plan
