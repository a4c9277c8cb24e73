"""``learn_trees_per_call``: a closed step's trees are learned a few per schedule() call, in
order, each exactly once, and each step's batch trains the shared model once, after its last
tree; meanwhile the core says it is busy so the shell calls again at once."""

import numpy as np
import pytest

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from tests.allocator.helpers import drive
from tracerl.config import ConfigError, load_config

SMALL = {"batch_prompts": 3, "group_size": 2, "step_budget_turns": 36}


def _core(learn_trees_per_call):
    sim = SimulatorConfig(num_prompts=32)
    rng = np.random.default_rng(5)
    prompts = make_prompts(sim, rng)
    config = AllocatorCoreConfig(strategy="trace", learn_trees_per_call=learn_trees_per_call, **SMALL)
    return AllocatorCore(config, [p.task for p in prompts], seed=5), SimulatedActor(sim, prompts), rng


def _record_learning(core, monkeypatch):
    events = []
    learn, train = core.outcomes.learn_from_tree, core.outcomes.evaluate_then_train

    def learn_from_tree(tree, batch, policy_version):
        events.append(("tree", tree.tree_id))
        return learn(tree, batch, policy_version)

    def evaluate_then_train(batch):
        events.append(("train", len(batch.samples)))
        return train(batch)

    monkeypatch.setattr(core.outcomes, "learn_from_tree", learn_from_tree)
    monkeypatch.setattr(core.outcomes, "evaluate_then_train", evaluate_then_train)
    return events


def test_closed_trees_are_learned_at_most_k_per_call_each_once_in_order(monkeypatch):
    core, actor, rng = _core(learn_trees_per_call=1)
    events = _record_learning(core, monkeypatch)
    trees = drive(core, actor, steps=4, rng=rng)
    # Past every step's timeout: the open steps close too, and their trees join the queue.
    trees += core.pop_completed(1e6)
    assert sum(len(p.trees) for p in core._learning) >= 2
    loads = [ActorLoad("a0", 0, 256)]
    while core._learning:  # the calls after the last close drain what is left
        before = sum(len(p.trees) for p in core._learning)
        assert core.busy
        core.schedule(1e6, loads)
        assert before - sum(len(p.trees) for p in core._learning) <= 1
    learned = [tree_id for kind, tree_id in events if kind == "tree"]
    emitted = [t.tree_id for t in trees]
    assert sorted(learned) == sorted(set(learned))  # none twice
    assert set(emitted) <= set(learned)
    # Trees are learned step by step (a tree id is "s<step>-<index>"), and each step trains once.
    steps = [int(tree_id.split("-")[0][1:]) for tree_id in learned]
    assert steps == sorted(steps)
    trains = [i for i, (kind, _) in enumerate(events) if kind == "train"]
    assert len(trains) == core.counters["steps_closed"] + core.counters["steps_closed_forced"]
    for index in trains:  # a step trains after its last tree, before any tree of a later step
        learned_before = sum(1 for kind, _ in events[:index] if kind == "tree")
        if learned_before:
            assert all(s > steps[learned_before - 1] for s in steps[learned_before:])


def test_by_default_a_step_is_learned_in_the_call_that_closes_it(monkeypatch):
    core, actor, rng = _core(learn_trees_per_call=0)
    drive(core, actor, steps=3, rng=rng)
    assert not core._learning


def test_a_negative_bound_is_refused():
    with pytest.raises(ConfigError, match=r"field learn_trees_per_call = -1: Expected `int` >= 0"):
        load_config(AllocatorCoreConfig, None, ["learn_trees_per_call=-1"])
