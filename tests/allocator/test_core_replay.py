"""An allocator core killed mid-run and rebuilt from what the streams hold loses no node and
emits none twice: every node on the stream ends in exactly one CompletedTree or in the
core's drop record (``pop_dropped``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig, step_of_tree
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from protocol import CompletedTree, TurnNode, WorkItem
from protocol.messages import node_id_for, replace

ACTORS = [ActorLoad("a0", 0, 1000), ActorLoad("a1", 0, 1000)]


@dataclass
class Streams:
    """What JetStream would hold: every node published, every tree published, the work
    items not yet acked (an actor acks after its item's last node); plus the durable drop
    records the shell writes."""

    nodes: list[TurnNode] = field(default_factory=list)
    work: list[WorkItem] = field(default_factory=list)
    trees: list[CompletedTree] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)


def _new_core(strategy: str, seed: int = 0) -> tuple[AllocatorCore, SimulatedActor]:
    sim = SimulatorConfig(num_prompts=48, early_stop=0.25)
    prompts = make_prompts(sim, np.random.default_rng(seed))
    cfg = AllocatorCoreConfig(
        strategy=strategy,
        step_budget_turns=64,
        batch_prompts=4,
        max_open_steps=2,
        step_timeout_s=30.0,
        orphan_timeout_s=5.0,
        plan_units_per_call=10**9,
    )
    return AllocatorCore(cfg, [p.task for p in prompts], seed=seed, run_id="test"), SimulatedActor(sim, prompts)


def _publish(core: AllocatorCore, streams: Streams, now: float) -> int:
    """The shell's order: drop records first, then the trees."""
    streams.dropped.update(node_id for _, _, node_id in core.pop_dropped())
    trees = core.pop_completed(now)
    streams.dropped.update(node_id for _, _, node_id in core.pop_dropped())
    streams.trees.extend(trees)
    return len({t.allocator_step for t in trees})


def _rebuild(old: AllocatorCore, streams: Streams, version: int, now: float) -> AllocatorCore:
    fresh = AllocatorCore(old.config, old.task_pool, seed=99, run_id="test")
    fresh.on_policy_version(version)
    for tree in streams.trees:
        fresh.restore_emitted(tree.tree_id, [n.node_id for n in tree.nodes])
    for item in streams.work:
        fresh.restore_work(item, now)
    for node in streams.nodes:
        fresh.restore_node(node, now)
    fresh.finish_replay()
    streams.dropped.update(node_id for _, _, node_id in fresh.pop_dropped())
    return fresh


def _run_with_crashes(
    strategy: str, seed: int, crash_rounds: set[int], rounds: int = 60
) -> tuple[Streams, AllocatorCore]:
    core, actor = _new_core(strategy, seed)
    rng = np.random.default_rng(seed + 1)
    streams = Streams()
    in_flight: list[TurnNode] = []  # published later: chains still running on actors
    version = 0
    for t in range(rounds):
        now = float(t)
        for routed in core.schedule(now, ACTORS):
            nodes = actor.rollout(routed.item, actor_id=routed.target or "a0", policy_version=version, rng=rng, now=now)
            in_flight.extend(nodes)
            streams.work.append(routed.item)
        # Some nodes arrive this round; the rest keep running. An actor publishes a chain's
        # turns in order, each after the previous one's ack, so the stream holds them in order.
        cut = int(rng.integers(len(in_flight) // 3, len(in_flight) + 1)) if in_flight else 0
        arriving, in_flight = in_flight[:cut], in_flight[cut:]
        for node in arriving:
            streams.nodes.append(node)
            core.on_node(node, now)
        running = {n.work_id for n in in_flight}
        streams.work = [item for item in streams.work if item.work_id in running]
        if t in crash_rounds:
            # Killed after deciding but before publishing: its unpublished trees and drop
            # records are lost with it; the redelivered nodes come back through the durable.
            core = _rebuild(core, streams, version, now)
            for node in arriving:
                assert core.on_node(node, now) in ("duplicate", "late")
        version += _publish(core, streams, now)
        core.on_policy_version(version)
    for node in in_flight:
        streams.nodes.append(node)
        core.on_node(node, float(rounds))
    _publish(core, streams, float(rounds) + 1000.0)  # every open step times out and closes
    return streams, core


def _tree_node_ids(trees: list[CompletedTree]) -> list[str]:
    return [n.node_id for t in trees for n in t.nodes]


@pytest.mark.parametrize("strategy", ["trace", "grpo", "tree-random"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_node_ends_in_one_tree_or_a_drop_record_across_crashes(strategy, seed):
    streams, core = _run_with_crashes(strategy, seed, crash_rounds={7, 8, 23, 41})
    in_trees = _tree_node_ids(streams.trees)
    assert len(in_trees) == len(set(in_trees)), "a node was emitted in two trees"
    tree_ids = [t.tree_id for t in streams.trees]
    assert len(tree_ids) == len(set(tree_ids)), "a tree was emitted twice"
    lost = {n.node_id for n in streams.nodes} - set(in_trees) - streams.dropped
    assert not lost
    assert len({t.allocator_step for t in streams.trees}) >= 5
    assert core.metrics()["budget_overspent_turns"] == 0
    # The step budget holds across restarts: turns generated per step, counted on the stream.
    turns = Counter(step_of_tree(tree_id) for tree_id in {n.node_id: n.tree_id for n in streams.nodes}.values())
    assert max(turns.values()) <= core.config.step_budget_turns


def test_replay_then_redelivery_changes_nothing():
    core, actor = _new_core("trace")
    rng = np.random.default_rng(3)
    streams = Streams()
    for t in range(3):
        for routed in core.schedule(float(t), ACTORS):
            for node in actor.rollout(routed.item, actor_id="a0", policy_version=0, rng=rng, now=float(t)):
                streams.nodes.append(node)
                core.on_node(node, float(t))
    fresh = _rebuild(core, streams, 0, 3.0)
    before = {i: (s.budget.used_turns, s.budget.committed, s.outstanding_items) for i, s in fresh.steps.items()}
    nodes_before = {k: len(t.nodes) for k, t in fresh.trees.items()}
    for node in streams.nodes:
        assert fresh.on_node(node, 4.0) == "duplicate"
    assert {i: (s.budget.used_turns, s.budget.committed, s.outstanding_items) for i, s in fresh.steps.items()} == before
    assert {k: len(t.nodes) for k, t in fresh.trees.items()} == nodes_before
    assert fresh.pop_dropped() == []


def test_new_steps_after_a_replay_of_closed_steps_get_new_ids_and_open_at_once():
    core, actor = _new_core("grpo")
    rng = np.random.default_rng(0)
    streams = Streams()
    version = 0
    for t in range(40):
        for routed in core.schedule(float(t), ACTORS):
            for node in actor.rollout(routed.item, actor_id="a0", policy_version=version, rng=rng, now=float(t)):
                streams.nodes.append(node)
                core.on_node(node, float(t))
        version += _publish(core, streams, float(t))
        core.on_policy_version(version)
        if version >= 2 and not core.steps:
            break
    assert version >= 2 and not core.steps
    fresh = _rebuild(core, streams, version, 50.0)
    assert not fresh.steps  # nothing was open: nothing restored
    routed = fresh.schedule(51.0, ACTORS)
    assert routed, "the learner is taken as caught up: a new step opens"
    emitted = {t.tree_id for t in streams.trees}
    assert not {r.item.tree_id for r in routed} & emitted
    assert (
        min(int(r.item.tree_id[1:].split("-")[0]) for r in routed) == max(t.allocator_step for t in streams.trees) + 1
    )


def test_a_tree_its_step_closed_without_stays_closed_after_replay():
    """A tree with no complete path is not emitted; replay must not reopen its (closed) step."""
    core, actor = _new_core("grpo")
    rng = np.random.default_rng(0)
    streams = Streams()
    routed = core.schedule(0.0, ACTORS)
    nodes = [n for r in routed for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=0.0)]
    starved = routed[0].item.tree_id
    for node in nodes:
        if node.tree_id != starved or not node.done:  # the starved tree never gets a leaf
            streams.nodes.append(node)
            core.on_node(node, 0.0)
    _publish(core, streams, 100.0)  # step timeout: closes partial, drops the starved tree
    assert streams.trees and starved not in {t.tree_id for t in streams.trees}
    starved_ids = {n.node_id for n in streams.nodes if n.tree_id == starved}
    assert starved_ids and starved_ids <= streams.dropped
    fresh = _rebuild(core, streams, 1, 101.0)
    assert starved not in fresh.trees and not fresh.steps
    late = next(n for n in nodes if n.tree_id == starved and n.done)
    assert fresh.on_node(late, 102.0) in ("late", "unknown_tree")
    assert [d[2] for d in fresh.pop_dropped()] == [late.node_id]


def test_a_rebuilt_step_commits_what_the_old_one_did_and_never_passes_its_budget():
    seen = []
    core, actor = _new_core("trace", seed=2)
    rng = np.random.default_rng(5)
    streams = Streams()
    in_flight: list[TurnNode] = []
    for t in range(12):
        for routed in core.schedule(float(t), ACTORS):
            in_flight.extend(actor.rollout(routed.item, actor_id="a0", policy_version=0, rng=rng, now=float(t)))
            streams.work.append(routed.item)
        arriving, in_flight = in_flight[: len(in_flight) // 2], in_flight[len(in_flight) // 2 :]
        for node in arriving:
            streams.nodes.append(node)
            core.on_node(node, float(t))
        running = {n.work_id for n in in_flight}
        streams.work = [item for item in streams.work if item.work_id in running]
        fresh = _rebuild(core, streams, 0, float(t))
        for index, step in core.steps.items():
            if index in fresh.steps:
                seen.append(index)
                assert fresh.steps[index].budget.committed == step.budget.committed
                assert fresh.steps[index].budget.used_turns == step.budget.used_turns
        assert fresh.counters["restore_over_budget"] == 0
    assert seen


def _as_sampling(node: TurnNode, sampling: str) -> TurnNode:
    """The simulator's node as an actor names it (``<work>.<sample>.<depth>`` -> ``node_id_for``)."""

    def rename(node_id: str) -> str:
        work_id, sample, depth = node_id.rsplit(".", 2)
        return node_id_for(work_id, sampling, int(sample), int(depth))

    parent_id = None if node.parent_id is None else rename(node.parent_id)
    return replace(node, node_id=rename(node.node_id), parent_id=parent_id)


def test_an_item_finished_by_a_second_sampling_is_settled_on_replay_despite_the_abandoned_first():
    core, actor = _new_core("trace")
    rng = np.random.default_rng(5)
    streams = Streams()
    routed = core.schedule(0.0, ACTORS)
    items = [r.item for r in routed]
    redone = next(i for i in items if i.num_samples > 1 and i.max_turns > 1)
    streams.work = [i for i in items if i is not redone]  # the second sampling acked it
    full = actor.rollout(redone, actor_id="a1", policy_version=0, rng=rng, now=0.0)
    first_turn = next(n for n in full if n.depth == 1 and not n.done)
    # Sampling A died after its first turn of chain 0; sampling B ran every chain.
    streams.nodes = [_as_sampling(first_turn, "A")] + [_as_sampling(n, "B") for n in full]
    fresh = _rebuild(core, streams, 0, 1.0)
    record = fresh.trees[redone.tree_id].work[redone.work_id]
    assert record.synthesized
    # One slot per chain, whichever sampling ran it: done and settled, not held to the step timeout.
    assert (record.num_samples, record.finished, record.settled) == (redone.num_samples, True, True)


def test_a_replay_that_reopens_a_step_closed_empty_still_opens_new_steps():
    """A step that timed out before any node came closes with no tree; its nodes come late and
    stay on the stream. A replay after later steps were emitted reopens that step from them; it
    must still take the learner as caught up with the emitted steps, or every new step is held
    for versions that never come (seen in `tracerl bench chaos` on a loaded machine)."""
    core, actor = _new_core("grpo")
    rng = np.random.default_rng(0)
    streams = Streams()
    first = core.schedule(0.0, ACTORS)
    late = [n for r in first for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=0.0)]
    empty_steps = {step_of_tree(r.item.tree_id) for r in first}
    _publish(core, streams, 31.0)  # past the step timeout: closed, nothing to emit
    assert not streams.trees and not core.steps
    for node in late:
        streams.nodes.append(node)
        core.on_node(node, 31.0)
    version = 0
    for t in range(32, 200):
        for routed in core.schedule(float(t), ACTORS):
            for node in actor.rollout(routed.item, actor_id="a0", policy_version=version, rng=rng, now=float(t)):
                streams.nodes.append(node)
                core.on_node(node, float(t))
        version += _publish(core, streams, float(t))
        core.on_policy_version(version)
        if version >= 3 and not core.steps:
            break
    assert version >= 3 and not core.steps
    newest_emitted = max(t.allocator_step for t in streams.trees)
    fresh = _rebuild(core, streams, version, 300.0)
    assert set(fresh.steps) <= empty_steps  # only the empty steps come back, from their late nodes
    new_steps = set()
    for t in range(301, 340):
        new_steps |= {step_of_tree(r.item.tree_id) for r in fresh.schedule(float(t), ACTORS)}
        _publish(fresh, streams, float(t))
    assert any(step > newest_emitted for step in new_steps), "new steps are held for the learner"
