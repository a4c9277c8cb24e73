"""A strategy is a planner plus its registration: the core runs one it has never heard of."""

import numpy as np

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from allocator.strategies import STRATEGIES, TwoStage
from allocator.strategies.base import roots_round

ACTORS = [ActorLoad("a0", 0, 1000)]


class OnePromptRoots:
    """Stage 1 that gives all the rollouts it may (up to max_per_prompt) to one new prompt."""

    def plan_roots(self, core, step, rollouts):
        pool = core.draw_pool(step, 1)
        return roots_round(core, step, pool, [min(rollouts, core.config.max_per_prompt)])


def test_a_registered_planner_runs_the_step_without_the_core_knowing_its_name(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "one-prompt", lambda config: TwoStage(OnePromptRoots()))
    sim = SimulatorConfig(num_prompts=16, early_stop=0.0)  # every chain runs to max_turns: no refunds
    rng = np.random.default_rng(0)
    prompts = make_prompts(sim, rng)
    cfg = AllocatorCoreConfig(
        strategy="one-prompt",
        step_budget_turns=40,
        max_turns=4,
        max_per_prompt=6,
        max_open_steps=1,
        plan_units_per_call=10**9,
    )
    core, actor = AllocatorCore(cfg, [p.task for p in prompts], seed=0), SimulatedActor(sim, prompts)
    rounds = []
    for t in range(10):
        routed = core.schedule(float(t), ACTORS)
        if routed:
            rounds.append([(r.item.kind, r.item.num_samples) for r in routed])
        for r in routed:
            for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=float(t)):
                core.on_node(n, float(t))
        if core.counters["steps_closed"]:
            break
    # 40 turns / 4 per rollout = 10 rollouts: 6 to the first prompt, then the 4 left to a
    # second one; then 0 are left, and the empty round closes the step.
    assert rounds == [[("root", 6)], [("root", 4)]]
    trees = core.pop_completed(10.0)
    assert len(trees) == 2 and {t.strategy for t in trees} == {"one-prompt"}
    assert len({t.task.task_id for t in trees}) == 2
    assert [len(task_ids) for _, task_ids, _ in core.stage1_log] == [1, 1]
