"""Behaviour of the stage-2 and search strategies on one planned round."""

import numpy as np

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig, turn_entropy
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts

ACTORS = [ActorLoad("a0", 0, 10_000)]


def _search_core(strategy, **overrides):
    """A core that plans a whole round per call, its simulated actor and the simulation's rng."""
    sim = SimulatorConfig(num_prompts=64)
    rng = np.random.default_rng(4)
    prompts = make_prompts(sim, rng)
    cfg = AllocatorCoreConfig(
        strategy=strategy,
        step_budget_turns=128,
        max_items_per_call=1000,
        plan_units_per_call=10**9,
        max_open_steps=1,
        **overrides,
    )
    return AllocatorCore(cfg, [p.task for p in prompts], seed=4), SimulatedActor(sim, prompts), rng


def _after_first_round(strategy, **overrides):
    # One call plans and hands out a whole round: the tests look at that round.
    core, actor, rng = _search_core(strategy, **overrides)
    routed = core.schedule(0.0, ACTORS)
    for r in routed:
        for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=0.0):
            core.on_node(n, 0.0)
    return core, routed, core.schedule(1.0, ACTORS)


def test_trace_branches_only_from_unanimous_prefixes_within_budget():
    core, roots, branches = _after_first_round("trace")
    assert roots and branches and all(r.item.kind == "branch" for r in branches)
    for r in branches:
        state = core.trees[r.item.tree_id].nodes[r.item.parent_id]
        assert state.successes in (0, state.leaves) and not state.node.done
        assert r.item.num_samples <= core.config.branch_k
    step = core.steps[0]
    assert step.budget.committed <= core.config.step_budget_turns


def test_entropy_branches_only_after_a_rise():
    core, _, branches = _after_first_round("entropy")
    assert branches
    for r in branches:
        tree = core.trees[r.item.tree_id]
        node = tree.nodes[r.item.parent_id].node
        if node.parent_id is not None:
            assert turn_entropy(node) > turn_entropy(tree.nodes[node.parent_id].node)


def test_best_of_n_continues_from_the_best_scored_candidate():
    core, roots, nxt = _after_first_round("tsr-bon", group_size=2, tsr_width=3)
    width = core.config.tsr_width
    assert roots and all(r.item.max_turns == 1 for r in roots)
    by_tree = {}
    for r in nxt:
        by_tree.setdefault(r.item.tree_id, []).append(r.item)
    assert by_tree
    for tree_id, items in by_tree.items():
        tree = core.trees[tree_id]
        firsts = sorted((tree.nodes[i] for i in tree.first_turns), key=lambda s: s.node.node_id)
        chunks = [firsts[j * width : (j + 1) * width] for j in range(core.config.group_size)]
        best = {max(c, key=lambda s: (s.node.env_score, s.node.node_id)).node.node_id for c in chunks}
        assert {i.parent_id for i in items} <= best
        assert all(i.num_samples == width and i.max_turns == 1 for i in items)


def test_beam_keeps_the_top_b_candidates():
    core, roots, nxt = _after_first_round("tsr-beam", group_size=2, tsr_width=4)
    tree_id = roots[0].item.tree_id
    tree = core.trees[tree_id]
    ranked = sorted(tree.nodes.values(), key=lambda s: (-s.node.env_score, s.node.node_id))
    expected = {s.node.node_id for s in ranked[:2] if not s.node.done}
    assert {r.item.parent_id for r in nxt if r.item.tree_id == tree_id} == expected


def test_lookahead_items_generate_the_extra_turn():
    _, roots, _ = _after_first_round("tsr-lookahead", tsr_lookahead_turns=1)
    assert roots and all(r.item.max_turns == 2 for r in roots)


def test_search_waits_for_every_candidate_of_a_round():
    for strategy in ("tsr-bon", "tsr-beam"):
        core, actor, rng = _search_core(strategy, group_size=2, tsr_width=3)
        roots = core.schedule(0.0, ACTORS)
        assert roots
        # Planning again before any candidate is back neither ends a chain nor issues more.
        assert core.schedule(0.5, ACTORS) == []
        chains = [c for step in core.steps.values() for cs in step.search.values() for c in cs]
        assert chains and not any(c.finished for c in chains)
        nodes = [n for r in roots for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=0.0)]
        for n in nodes[:-1]:
            core.on_node(n, 1.0)
        assert core.schedule(1.0, ACTORS) == [], strategy  # one candidate still out
        core.on_node(nodes[-1], 1.5)
        nxt = core.schedule(2.0, ACTORS)
        assert nxt and all(r.item.kind == "branch" for r in nxt), strategy
        # While those are out, no chain is continued twice from the same frontier.
        assert core.schedule(2.5, ACTORS) == [], strategy
