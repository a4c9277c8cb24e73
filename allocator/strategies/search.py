"""TSR: per-turn search on the environment's score. Each tree runs ``group_size`` chains;
every round samples ``tsr_width`` candidates for the next turn of each chain and moves the
chain to the best. ``tsr-bon`` (best of n) picks per chain, ``tsr-beam`` keeps the top
candidates over all of a tree's chains, and ``tsr-lookahead`` scores a candidate by the
best score among the ``tsr_lookahead_turns`` turns generated below it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import TaskSpec

from ..step import Issue, Issued, StepState
from ..tree import NodeState, RolloutTree

if TYPE_CHECKING:
    from ..core import AllocatorCore


@dataclass
class SearchChain:
    """One TSR search path: its current frontier node, or finished."""

    frontier: str | None
    pending_work: str | None = None
    finished: bool = False


@dataclass(frozen=True)
class Search:
    """The chains of each tree live in ``step.search``, by tree id."""

    beam: bool = False
    lookahead_turns: int = 0

    def start_round(self, core: AllocatorCore, step: StepState, now: float) -> list[Issue]:
        cfg = core.config
        per_turn = 1 + self.lookahead_turns
        if not step.roots_issued:
            step.roots_issued = True
            worst_case = cfg.group_size * cfg.tsr_width * per_turn * cfg.max_turns
            prompts = max(1, cfg.step_budget_turns // worst_case)
            samples = cfg.tsr_width if self.beam else cfg.group_size * cfg.tsr_width

            def issue_search_root(task: TaskSpec, at: float) -> Issued | None:
                issued = core.issue_root(step, task, samples, min(per_turn, cfg.max_turns), at)
                if issued is not None:
                    item = issued[0]
                    step.search[item.tree_id] = [SearchChain(None, item.work_id) for _ in range(cfg.group_size)]
                return issued

            return [functools.partial(issue_search_root, task) for task in core.draw_pool(step, prompts)]
        items: list[Issue] = []
        planned = 0
        for tree_id, chains in step.search.items():
            tree = core.trees.get(tree_id)
            if tree is None:
                continue
            if self.beam:
                _advance_beam(tree, chains, cfg.max_turns)
            else:
                _advance_best_of_n(tree, chains, cfg.tsr_width, cfg.max_turns)
            for chain in chains:
                if chain.finished or chain.frontier is None:
                    continue
                state = tree.nodes[chain.frontier]
                turns = min(per_turn, cfg.max_turns - state.node.depth)
                cost = cfg.tsr_width * turns
                if planned + cost > step.budget.available:
                    chain.finished = True
                    core.counters["search_chains_cut_by_budget"] += 1
                    continue
                planned += cost
                items.append(functools.partial(_issue_search_step, core, step, tree, state, chain, turns))
        return items


def _issue_search_step(
    core: AllocatorCore,
    step: StepState,
    tree: RolloutTree,
    state: NodeState,
    chain: SearchChain,
    turns: int,
    now: float,
) -> Issued | None:
    issued = core.issue_branch(step, tree, state, core.config.tsr_width, turns, now)
    if issued is None:
        chain.finished = True
    else:
        chain.pending_work = issued[0].work_id
    return issued


def _candidates_of(tree: RolloutTree, work_id: str) -> list[NodeState]:
    record = tree.work[work_id]
    depth = record.prefix_depth + 1
    return sorted(
        (s for s in tree.nodes.values() if s.node.work_id == work_id and s.node.depth == depth),
        key=lambda s: s.node.node_id,
    )


def _search_score(tree: RolloutTree, state: NodeState) -> float:
    """env_score of the candidate; with lookahead, the best score among its own descendants."""
    best = state.node.env_score
    stack = list(state.children)
    while stack:
        child = tree.nodes[stack.pop()]
        best = max(best, child.node.env_score)
        stack.extend(child.children)
    return best


def _advance_best_of_n(tree: RolloutTree, chains: list[SearchChain], width: int, max_turns: int) -> None:
    shared_root = [c for c in chains if c.frontier is None and not c.finished]
    if shared_root:
        # Round 0 sampled every chain's first candidates in one root item: split them.
        root_work = shared_root[0].pending_work
        assert root_work is not None, "root chains are created with their root item"
        candidates = _candidates_of(tree, root_work)
        for j, chain in enumerate(shared_root):
            _choose(tree, chain, candidates[j * width : (j + 1) * width], max_turns)
        return
    for chain in chains:
        if not chain.finished and chain.pending_work is not None:
            _choose(tree, chain, _candidates_of(tree, chain.pending_work), max_turns)


def _choose(tree: RolloutTree, chain: SearchChain, candidates: list[NodeState], max_turns: int) -> None:
    chain.pending_work = None
    if not candidates:
        chain.finished = True
        return
    best = max(candidates, key=lambda s: (_search_score(tree, s), s.node.node_id))
    chain.frontier = best.node.node_id
    if best.node.done or best.node.depth >= max_turns:
        chain.finished = True


def _advance_beam(tree: RolloutTree, chains: list[SearchChain], max_turns: int) -> None:
    pending = {c.pending_work for c in chains if c.pending_work is not None and not c.finished}
    candidates = [s for w in sorted(pending) for s in _candidates_of(tree, w)]
    candidates.sort(key=lambda s: (-_search_score(tree, s), s.node.node_id))
    open_chains = [c for c in chains if not c.finished]
    for chain in open_chains:
        chain.pending_work = None
        if not candidates:
            chain.finished = True
            continue
        best = candidates.pop(0)
        chain.frontier = best.node.node_id
        if best.node.done or best.node.depth >= max_turns:
            chain.finished = True
