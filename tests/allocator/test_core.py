import itertools

import msgspec.inspect as mi
import numpy as np
import pytest

from allocator.allocation import ROOT_OBJECTIVES
from allocator.core import STRATEGIES, ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from protocol.messages import replace
from tracerl.config import ConfigError, load_config

ACTORS = [ActorLoad("a0", 0, 1000), ActorLoad("a1", 0, 1000)]


SIM = SimulatorConfig(num_prompts=64)


def _setup(strategy="trace", seed=0, sim=SIM, **overrides):
    rng = np.random.default_rng(seed)
    prompts = make_prompts(sim, rng)
    # One call plans a whole round: these tests look at what a round hands out.
    overrides.setdefault("plan_units_per_call", 10**9)
    cfg = AllocatorCoreConfig(strategy=strategy, step_budget_turns=96, batch_prompts=4, **overrides)
    return AllocatorCore(cfg, [p.task for p in prompts], seed=seed, run_id="test"), SimulatedActor(sim, prompts), rng


def _round(core, actor, rng, now, actors=ACTORS, version=None):
    routed = core.schedule(now, actors)
    nodes = []
    for r in routed:
        nodes += actor.rollout(
            r.item,
            actor_id=r.target or "a0",
            policy_version=core.policy_version if version is None else version,
            rng=rng,
            now=now,
        )
    return routed, nodes


def test_config_rejects_unknown_strategy_and_bad_ranges():
    with pytest.raises(ValueError, match="strategy"):
        AllocatorCoreConfig(strategy="greedy")  # a cross-field rule: checked however the config is built
    with pytest.raises(ConfigError, match=r"field group_size = 1: Expected `int` >= 2"):
        load_config(AllocatorCoreConfig, None, ["group_size=1"])
    with pytest.raises(ConfigError, match=r"field root_fraction = 0\.0: Expected `float` > 0\.0"):
        load_config(AllocatorCoreConfig, None, ["root_fraction=0.0"])
    with pytest.raises(ConfigError, match=r"field root_objective = 'most_tokens': Invalid enum value 'most_tokens'"):
        load_config(AllocatorCoreConfig, None, ["root_objective=most_tokens"])


def test_the_root_objective_field_offers_exactly_the_objectives_root_gain_table_knows():
    fields = {f.name: f.type for f in mi.type_info(AllocatorCoreConfig).fields}
    assert isinstance(fields["root_objective"], mi.LiteralType)
    assert set(fields["root_objective"].values) == set(ROOT_OBJECTIVES) == {"mixed_groups", "informative_rollouts"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_stays_within_the_step_budget(strategy):
    sim = SimulatorConfig(num_prompts=64, early_stop=0.25)  # variable length: refunds happen
    core, actor, rng = _setup(strategy, sim=sim, stage2="trace")
    budget = core.config.step_budget_turns
    emitted = []
    for t in range(200):
        _, nodes = _round(core, actor, rng, float(t))
        for i in rng.permutation(len(nodes)):
            core.on_node(nodes[i], float(t))
            for step in core.steps.values():
                assert step.budget.committed <= budget
                assert step.budget.used_turns <= step.budget.committed
        emitted += core.pop_completed(float(t))
        if core.counters["steps_closed"] >= 3:
            break
        core.on_policy_version(core.counters["steps_closed"])
    m = core.metrics()
    assert core.counters["steps_closed"] >= 3
    assert m["budget_overspent_turns"] == 0
    assert 0 < m["budget_turns_used"] <= budget * core.counters["steps_closed"]
    assert emitted and all(t.strategy == strategy for t in emitted)
    # every emitted node is on a complete root-to-leaf path: a terminal turn or a parent of an emitted node
    for tree in emitted:
        parents = {n.parent_id for n in tree.nodes}
        assert all(n.done or n.node_id in parents for n in tree.nodes)


def test_stage1_only_strategies_spend_refunds_on_more_groups():
    sim = SimulatorConfig(num_prompts=64, early_stop=0.5)
    core, actor, rng = _setup("grpo", sim=sim)
    for t in range(50):
        _, nodes = _round(core, actor, rng, float(t))
        for n in nodes:
            core.on_node(n, float(t))
        core.pop_completed(float(t))
        if core.counters["steps_closed"]:
            break
    # 96 turns reserve 6 groups of 4 x 4 turns; short chains refund and buy more groups
    assert core.counters["groups"] > 6
    assert core.metrics()["budget_turns_used"] <= 96


def _one_step_items(strategy, sim):
    core, actor, rng = _setup(strategy, sim=sim)
    items = []
    for t in range(50):
        routed, nodes = _round(core, actor, rng, float(t))
        items += [r.item for r in routed]
        for n in nodes:
            core.on_node(n, float(t))
        core.pop_completed(float(t))
        if core.counters["steps_closed"]:
            return core, [i for i in items if i.tree_id.startswith("s0-")]
    raise AssertionError("the step did not close")


def test_trace_stages_run_alone_for_the_decomposition():
    sim = SimulatorConfig(num_prompts=64, early_stop=0.5)
    # The root DP alone: only root items, refunds bought further DP-chosen groups.
    core, items = _one_step_items("trace-roots", sim)
    assert items and all(i.kind == "root" for i in items)
    assert len({i.task.task_id for i in items}) > 1
    assert core.metrics()["root_turn_share"] == 1.0
    assert core.metrics()["budget_turns_used"] <= 96
    # Uniform roots, then TRACE's stage 2: every root group has group_size samples, and
    # the refunds went to continuations from prefixes.
    core, items = _one_step_items("trace-prefixes", sim)
    roots = [i for i in items if i.kind == "root"]
    assert roots and all(i.num_samples == core.config.group_size for i in roots)
    assert any(i.kind != "root" and i.prefix_depth >= 1 for i in items)
    m = core.metrics()
    assert m["budget_turns_used"] <= 96
    # Every settled turn is counted once, at the depth its item started from.
    by_depth = {k: v for k, v in m.items() if k.startswith("turns_branches_depth")}
    assert by_depth and all(v > 0 for v in by_depth.values())
    assert 0 < m["root_turn_share"] < 1
    # budget_turns_used counts closed steps; settled items of open steps are counted too.
    used = m["budget_turns_used"] + sum(step.budget.used_turns for step in core.steps.values())
    assert m["budget_turns_used"] <= m["turns_roots"] + sum(by_depth.values()) <= used


def test_trace_roots_make_no_group_smaller_than_min_per_prompt():
    sim = SimulatorConfig(num_prompts=64, early_stop=0.5)
    _, items = _one_step_items("trace-roots", sim)
    assert any(i.num_samples < 4 for i in items)  # the default makes pairs and triples
    core, actor, rng = _setup("trace-roots", sim=sim, min_per_prompt=4)
    routed, _ = _round(core, actor, rng, 0.0)
    assert routed and all(r.item.num_samples >= 4 for r in routed)
    with pytest.raises(ValueError, match="min_per_prompt"):
        AllocatorCoreConfig(min_per_prompt=9)


def test_node_outcomes_duplicate_unknown_late():
    core, actor, rng = _setup("grpo")
    _routed, nodes = _round(core, actor, rng, 0.0)
    assert core.on_node(nodes[0], 0.0) == "accepted"
    assert core.on_node(nodes[0], 0.0) == "duplicate"
    foreign = replace(nodes[0], tree_id="s99-0")
    assert core.on_node(foreign, 0.0) == "unknown_tree"
    for n in nodes[1:]:
        core.on_node(n, 0.0)
    for t in range(1, 30):
        _, more = _round(core, actor, rng, float(t))
        for n in more:
            core.on_node(n, float(t))
        if core.counters["steps_closed"]:
            break
    assert core.on_node(nodes[0], 3.0) == "late"
    assert core.counters["nodes_duplicate"] == 1 and core.counters["nodes_unknown_tree"] == 1


def _finish_roots(core, actor, rng, version=None, actors=ACTORS):
    routed, nodes = _round(core, actor, rng, 0.0, actors=actors, version=version)
    assert all(r.item.kind == "root" and r.target is None for r in routed)
    for n in nodes:
        core.on_node(n, 0.0)
    return nodes


def test_branches_route_to_the_prefix_owner_when_it_has_room():
    core, actor, rng = _setup("tree-random")
    _finish_roots(core, actor, rng)
    routed = core.schedule(1.0, [ActorLoad("a0", 0, 3)])
    branches = [r for r in routed if r.item.kind == "branch"]
    assert branches
    assert [r.target for r in branches[:3]] == ["a0"] * 3
    assert all(r.target is None for r in branches[3:])
    assert core.counters["affinity_hits"] == 3
    assert core.counters["affinity_misses"] == len(branches) - 3
    b = branches[0].item
    tree = core.trees[b.tree_id]
    parent = tree.nodes[b.parent_id].node
    assert b.prefix_depth == parent.depth and b.env_snapshot == parent.env_snapshot
    assert list(b.prefix_token_ids) == tree.prefix_token_ids(b.parent_id)
    assert b.max_turns == core.config.max_turns - parent.depth


def test_never_branches_from_stale_prefixes():
    core, actor, rng = _setup("tree-random", staleness_eta=1)
    _finish_roots(core, actor, rng, version=0)
    core.on_policy_version(2)  # every prefix now lags by 2 > eta
    routed = core.schedule(1.0, ACTORS)
    assert not [r for r in routed if r.item.kind == "branch"]
    assert core.counters["branch_skipped_stale"] > 0


def test_does_not_run_more_than_eta_versions_ahead_of_the_learner():
    core, actor, rng = _setup("grpo", staleness_eta=1, max_open_steps=5)
    opened = []
    for t in range(40):
        _, nodes = _round(core, actor, rng, float(t))
        for n in nodes:
            core.on_node(n, float(t))
        core.pop_completed(float(t))
        opened.append(core.counters["steps_opened"])
    # learner never moves from version 0: steps 0 and 1 only (expected versions 0 and 1)
    assert opened[-1] == 2
    assert core.counters["steps_held_for_learner"] > 0


def test_timed_out_step_emits_partial_trees():
    core, actor, rng = _setup("grpo", step_timeout_s=10.0)
    routed, nodes = _round(core, actor, rng, 0.0)
    tree_id = routed[0].item.tree_id
    # deliver one complete chain of the first tree only
    chain = [n for n in nodes if n.tree_id == tree_id and n.node_id.split(".")[-2] == "0"]
    for n in chain:
        core.on_node(n, 0.0)
    assert core.pop_completed(5.0) == []
    out = core.pop_completed(11.0)
    assert [t.tree_id for t in out] == [tree_id]
    assert out[0].status == "partial" and len(out[0].nodes) == len(chain)
    assert core.counters["trees_dropped"] == len(routed) - 1


def _replay_case(strategy):
    core, actor, rng = _setup(strategy)
    node_log = []
    for t in range(2):
        _routed, nodes = _round(core, actor, rng, float(t))
        node_log += nodes
        for n in nodes:
            core.on_node(n, float(t))
    return core, actor, rng, node_log


def test_replaying_the_node_stream_rebuilds_the_state():
    core, actor, rng, node_log = _replay_case("trace")
    fresh = AllocatorCore(core.config, core.task_pool, seed=123, run_id="test")
    fresh.on_policy_version(core.policy_version)
    for n in node_log:
        fresh.restore_node(n, 2.0)
    fresh.finish_replay()
    assert set(fresh.trees) == set(core.trees)
    for tree_id, tree in core.trees.items():
        other = fresh.trees[tree_id]
        assert {k: (s.leaves, s.successes, s.expansions) for k, s in tree.nodes.items()} == {
            k: (s.leaves, s.successes, s.expansions) for k, s in other.nodes.items()
        }
    for index, step in core.steps.items():
        restored = fresh.steps[index]
        assert restored.budget.used_turns == step.budget.used_turns
        # fixed-length chains: every finished item used exactly what it reserved
        assert restored.budget.committed == step.budget.committed
        assert restored.outstanding_items == step.outstanding_items == 0
    # the restored core carries on with fresh work ids and closes the step
    issued = set()
    for t in range(3, 30):
        routed, nodes = _round(fresh, actor, rng, float(t))
        issued |= {r.item.work_id for r in routed}
        for n in nodes:
            fresh.on_node(n, float(t))
        if fresh.pop_completed(float(t)):
            break
    assert fresh.counters["steps_closed"] == 1
    assert not issued & {n.work_id for n in node_log}


def test_replay_keeps_an_unfinished_chain_outstanding_until_it_arrives():
    core, _actor, _rng, node_log = _replay_case("grpo")
    last_chain = node_log[-1]
    fresh = AllocatorCore(core.config, core.task_pool, seed=1, run_id="test")
    for n in node_log[:-1]:
        fresh.restore_node(n, 2.0)
    fresh.finish_replay()
    step = fresh.steps[fresh.trees[last_chain.tree_id].step]
    assert step.outstanding_items == 1
    assert all(r.item.tree_id.split("-")[0] != f"s{step.index}" for r in fresh.schedule(3.0, []))
    fresh.on_node(last_chain, 4.0)
    assert step.outstanding_items == 0


def test_restore_work_registers_pending_items():
    core, _actor, _rng = _setup("grpo")
    routed = core.schedule(0.0, ACTORS)
    fresh = AllocatorCore(core.config, core.task_pool, seed=1, run_id="test")
    for r in routed:
        fresh.restore_work(r.item, 1.0)
    assert fresh.steps[0].budget.committed == core.steps[0].budget.committed
    assert fresh.steps[0].outstanding_items == len(routed)


def test_next_step_opens_while_branches_run_when_actors_have_room():
    core, actor, rng = _setup("trace", max_open_steps=2)
    _finish_roots(core, actor, rng)
    routed = core.schedule(1.0, [ActorLoad("a0", 0, 10_000)])
    kinds = {(r.item.tree_id.split("-")[0], r.item.kind) for r in routed}
    assert ("s0", "branch") in kinds and ("s1", "root") in kinds
    # no free capacity: no overlap
    core2, actor2, rng2 = _setup("trace", max_open_steps=2)
    _finish_roots(core2, actor2, rng2)
    routed = core2.schedule(1.0, [ActorLoad("a0", 10, 10)])
    assert all(r.item.tree_id.startswith("s0-") for r in routed)


def test_tree_ids_carry_the_step_and_an_optional_prefix():
    from allocator.core import step_of_tree, tree_id_for

    assert step_of_tree(tree_id_for(12, 3, "r2-")) == 12
    assert step_of_tree("heldout-7") is None
    core, _, _ = _setup("grpo")
    prefixed = AllocatorCore(core.config, core.task_pool, seed=0, id_prefix="inc1-")
    routed = prefixed.schedule(0.0, ACTORS)
    assert routed and all(r.item.tree_id.startswith("inc1-s0-") for r in routed)


def test_a_round_planned_over_many_calls_hands_out_the_same_work():
    # A tiny per-call planning budget spreads every TRACE round (roots and branches) over
    # many schedule() calls; what is handed out, in order, must not depend on that.
    def run(units):
        core, actor, rng = _setup("trace", plan_units_per_call=units, max_open_steps=1)
        issued, planning_calls = [], 0
        for t in range(5000):
            routed, nodes = _round(core, actor, rng, t * 0.01)
            planning_calls += not routed and core.busy
            issued += [(r.item.work_id, r.item.parent_id, r.item.num_samples, r.item.sampling.seed) for r in routed]
            for n in nodes:
                core.on_node(n, t * 0.01)
            if core.pop_completed(t * 0.01):
                core.on_policy_version(core.policy_version + 1)  # retrains the predictor between steps
            if core.counters["steps_closed"] >= 3:
                return issued, planning_calls
        raise AssertionError("three steps did not close")

    sliced, planning_calls = run(20)
    whole, no_slicing = run(10**9)
    assert planning_calls > 50 and no_slicing == 0
    assert sliced == whole


def _closed_steps(core, actor, rng, steps):
    emitted = []
    for t in range(400):
        _, nodes = _round(core, actor, rng, float(t))
        for n in nodes:
            core.on_node(n, float(t))
        emitted += core.pop_completed(float(t))
        if core.counters["steps_closed"] >= steps:
            return emitted
        core.on_policy_version(core.counters["steps_closed"])
    raise AssertionError("the steps did not close")


def _mixed_sibling_groups(tree) -> int:
    """Brute force over the learner's view: every node with >= 2 children, and its leaves' outcomes."""
    children: dict[str, list[str]] = {}
    for node in tree.nodes:
        children.setdefault(node.parent_id, []).append(node.node_id)
    done = {n.node_id: n.reward >= 0.5 for n in tree.nodes if n.done}

    def outcomes(node_id):
        if node_id in done:
            return {done[node_id]}
        return set().union(*(outcomes(c) for c in children.get(node_id, [])))

    return sum(1 for n in tree.nodes if len(children.get(n.node_id, [])) >= 2 and outcomes(n.node_id) == {True, False})


@pytest.mark.parametrize("strategy", ["trace", "tree-random", "grpo"])
def test_branch_groups_mixed_counts_what_the_learner_receives(strategy):
    sim = SimulatorConfig(num_prompts=64, early_stop=0.25)
    core, actor, rng = _setup(strategy, sim=sim)
    emitted = _closed_steps(core, actor, rng, steps=4)
    expected = sum(_mixed_sibling_groups(t) for t in emitted)
    m = core.metrics()
    assert m["branch_groups_mixed"] == expected
    assert m["mixed_branch_groups_per_100_turns"] == pytest.approx(100 * expected / m["budget_turns_used"])
    if strategy == "grpo":
        assert expected == 0  # rollouts never share a prefix
    else:
        assert expected > 0


def test_strategies_with_the_same_seed_draw_the_same_prompts():
    first_draws = {}
    for strategy in ("grpo", "trace", "gps", "dps"):
        core, actor, rng = _setup(strategy, seed=5, sim=SimulatorConfig(num_prompts=512))
        _closed_steps(core, actor, rng, steps=3)
        first_draws[strategy] = {}
        for step, ids, _ in core.stage1_log:
            first_draws[strategy].setdefault(step, set(ids))
    for step in range(3):
        draws = sorted((d[step] for d in first_draws.values()), key=len)
        assert len(draws[0]) < len(draws[-1])
        # a smaller draw lies inside a larger one: grpo's batch inside the candidate pools
        assert all(small <= large for small, large in itertools.pairwise(draws))
    assert first_draws["grpo"][0] != first_draws["grpo"][1]
