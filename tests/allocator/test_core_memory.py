"""The allocator core keeps nothing per tree, node or step once a step is closed, and every
per-prompt or per-sample record it does keep is bounded: by the task pool, built at start,
or by a window allocated at full size. A long run's memory therefore stops growing early."""

import gc
import tracemalloc

import numpy as np

from allocator.core import STAGE1_LOG_STEPS, AllocatorCore, AllocatorCoreConfig
from allocator.learning import OutcomeModel
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from tests.allocator.helpers import drive

# The soak's small run: two prompts of two rollouts, 24 turns a step.
SMALL = {"batch_prompts": 2, "group_size": 2, "step_budget_turns": 24}


def _core(monkeypatch, window: int = 64):
    # A small evaluation window, so that it is full within the steps a test can afford.
    monkeypatch.setattr(OutcomeModel, "EVALUATION_WINDOW", window)
    sim = SimulatorConfig(num_prompts=32)
    rng = np.random.default_rng(3)
    prompts = make_prompts(sim, rng)
    core = AllocatorCore(AllocatorCoreConfig(strategy="trace", **SMALL), [p.task for p in prompts], seed=3)
    return core, SimulatedActor(sim, prompts), rng


def test_per_prompt_features_are_built_for_the_whole_pool_at_start(monkeypatch):
    core, _, _ = _core(monkeypatch)
    pool = {t.task_id for t in core.task_pool}
    assert set(core.outcomes._root_feature_cache) == pool
    assert set(core.outcomes._prompt_count_cache) == pool


def test_nothing_of_a_closed_step_is_kept_and_windows_keep_their_size(monkeypatch):
    core, actor, rng = _core(monkeypatch)
    outcomes = core.outcomes
    sizes = {
        name: w.nbytes
        for name, w in (
            ("decisions", outcomes.decision_scores.samples),
            ("loo", outcomes.loo_scores.samples),
            ("shared", outcomes._evaluation),
        )
    }
    drive(core, actor, steps=40, rng=rng)
    open_trees = set(core.trees)
    assert len(core.steps) <= core.config.max_open_steps
    assert set(outcomes._root_features) <= open_trees
    assert set(outcomes._decisions) <= open_trees
    assert len(core.stage1_log) <= STAGE1_LOG_STEPS
    # Full windows, still at the size they were allocated with.
    for name, window in (
        ("decisions", outcomes.decision_scores.samples),
        ("loo", outcomes.loo_scores.samples),
        ("shared", outcomes._evaluation),
    ):
        assert len(window) == window.capacity == 64, name
        assert window.nbytes == sizes[name], name


def test_memory_per_closed_step_after_warm_up_stays_under_a_few_kilobytes(monkeypatch):
    """What is left growing per step: the ids of emitted trees (late nodes are told from
    unknown ones by them) and, until their windows of 4096 decisions per depth are full, the
    concentration fit's decisions: about 1.7 kB a step here. A tree or its nodes kept past
    the step would cost tens of kilobytes a step."""
    core, actor, rng = _core(monkeypatch)
    # Traced from the start: the model's arrays are replaced at every update, and an array
    # allocated before tracing would be freed untraced while its successor counts as growth.
    tracemalloc.start()
    try:
        drive(core, actor, steps=30, rng=rng)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        drive(core, actor, steps=70, rng=rng)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_step = grown / 40
    assert per_step < 4096, f"{per_step:.0f} bytes a step"
