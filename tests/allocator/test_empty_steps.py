"""A step that closes without a tree brings the learner nothing, so no version comes of it."""

import numpy as np

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.simulator import SimulatorConfig, make_prompts


def _core():
    prompts = make_prompts(SimulatorConfig(num_prompts=32), np.random.default_rng(5))
    config = AllocatorCoreConfig(strategy="trace", batch_prompts=3, group_size=2, step_budget_turns=36)
    return AllocatorCore(config, [p.task for p in prompts], seed=5)


def test_steps_that_close_without_trees_do_not_hold_new_steps_for_the_learner():
    """Every step times out before any node arrives: each closes empty, the learner gets no
    tree and never moves, and steps must keep opening all the same (they once stopped after
    staleness_eta + 1, with the allocator waiting for the learner and the learner for trees)."""
    core = _core()
    loads = [ActorLoad("a0", 0, 256)]
    timeout = core.config.step_timeout_s
    for tick in range(12):
        core.schedule(tick * (timeout + 1.0), loads)
        core.pop_completed(tick * (timeout + 1.0))
    assert core.policy_version == 0
    assert core.counters["steps_opened"] >= core.config.staleness_eta + 4
    assert core.counters["steps_closed_empty"] >= core.config.staleness_eta + 3
