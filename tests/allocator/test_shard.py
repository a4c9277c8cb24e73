"""Allocator shards, pure: the prompt partition, the split of a step, and a sharded core's ids."""

import math
from collections import Counter

import numpy as np
import pytest

from allocator.config import AllocatorConfig
from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.shard import ShardConfig, prompt_key, shard_of_prompt, shard_pool, shard_share, shard_step
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts
from protocol import SamplingSpec, TaskSpec, WorkItem
from tests.allocator.helpers import drive
from tracerl.config import ConfigError, load_config

KEYS = [f"multihop/train-{i}" for i in range(4096)]


def test_one_shard_owns_every_prompt():
    assert {shard_of_prompt(key, 1) for key in KEYS} == {0}


def test_the_shard_of_a_prompt_is_its_blake2b_digest_modulo_the_count():
    # blake2b(b"a", digest_size=8) = 40f89e395b66422f, the same in every process and Python.
    digest = 0x40F89E395B66422F
    assert [shard_of_prompt("a", k) for k in (2, 3, 4, 7)] == [digest % k for k in (2, 3, 4, 7)] == [1, 2, 3, 2]


def test_the_partition_is_deterministic_and_in_range():
    for count in (2, 3, 8):
        first = [shard_of_prompt(key, count) for key in KEYS]
        assert first == [shard_of_prompt(key, count) for key in KEYS]
        assert set(first) == set(range(count))


@pytest.mark.parametrize("count", [2, 3, 4, 8])
def test_the_partition_is_balanced_on_a_few_thousand_prompts(count):
    counts = Counter(shard_of_prompt(key, count) for key in KEYS)
    expected = len(KEYS) / count
    # Four binomial standard deviations: a uniform hash stays inside, a biased one does not.
    bound = 4 * math.sqrt(expected * (1 - 1 / count))
    assert all(abs(counts[k] - expected) <= bound for k in range(count)), counts
    if count <= 4:
        assert all(abs(counts[k] - expected) <= 0.05 * expected for k in range(count)), counts


def test_shard_pools_partition_the_pool_in_order():
    pool = [TaskSpec("multihop", f"t{i}") for i in range(200)]
    pools = [shard_pool(pool, ShardConfig(index=k, count=3)) for k in range(3)]
    assert sorted((t.task_id for p in pools for t in p), key=lambda i: int(i[1:])) == [t.task_id for t in pool]
    for k, part in enumerate(pools):
        assert all(shard_of_prompt(prompt_key(t), 3) == k for t in part)
        assert part == [t for t in pool if t in part]  # pool order kept
    assert shard_pool(pool, ShardConfig()) == pool


def test_prompt_key_names_the_environment_and_the_task():
    assert prompt_key(TaskSpec("math", "q7", {"x": 1})) == "math/q7"


@pytest.mark.parametrize(
    ("total", "count", "shares"), [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (5, 1, [5]), (2, 4, [1, 1, 0, 0])]
)
def test_shard_share_splits_a_total_into_parts_that_differ_by_at_most_one(total, count, shares):
    assert [shard_share(total, ShardConfig(index=k, count=count)) for k in range(count)] == shares
    assert sum(shares) == total


def test_a_shard_step_has_its_share_of_the_budget_and_the_prompts():
    core = AllocatorCoreConfig(step_budget_turns=101, batch_prompts=7)
    assert shard_step(core, ShardConfig()) is core
    halves = [shard_step(core, ShardConfig(index=k, count=2)) for k in range(2)]
    assert [h.step_budget_turns for h in halves] == [51, 50]
    assert [h.batch_prompts for h in halves] == [4, 3]
    assert halves[0].strategy == core.strategy and halves[0].group_size == core.group_size


def test_shard_config_is_checked_and_names_its_process():
    assert ShardConfig().role_name == "allocator" and ShardConfig().tree_prefix == ""
    assert (
        ShardConfig(index=2, count=3).role_name == "allocator-2" and ShardConfig(index=2, count=3).tree_prefix == "k2-"
    )
    for index, count in ((1, 1), (2, 2)):  # a cross-field rule: checked however the config is built
        with pytest.raises(ValueError, match=rf"index must be in \[0, {count}\); got {index}"):
            ShardConfig(index=index, count=count)
    with pytest.raises(ConfigError, match=r"field shard.index = -1: Expected `int` >= 0"):
        load_config(AllocatorConfig, None, ["shard.index=-1", "shard.count=2"])
    with pytest.raises(ConfigError, match=r"field shard.count = 0: Expected `int` >= 1"):
        load_config(AllocatorConfig, None, ["shard.count=0"])
    with pytest.raises(ConfigError, match=r"index must be in \[0, 2\); got 2"):
        load_config(AllocatorConfig, None, ["shard.index=2", "shard.count=2"])


def test_a_budget_too_small_to_split_is_refused():
    core = AllocatorCoreConfig(step_budget_turns=12, max_turns=4)
    AllocatorConfig(core=core)
    with pytest.raises(ValueError, match="fewer than two full rollouts"):
        AllocatorConfig(core=core, shard=ShardConfig(index=0, count=2))
    assert AllocatorConfig(core=core).shard_core is core


def _sharded_run(shard: ShardConfig, steps: int = 3):
    sim = SimulatorConfig(num_prompts=64)
    rng = np.random.default_rng(0)
    prompts = make_prompts(sim, rng)
    config = AllocatorConfig(
        core=AllocatorCoreConfig(step_budget_turns=96, batch_prompts=4, plan_units_per_call=10**9), shard=shard
    )
    pool = shard_pool([p.task for p in prompts], shard)
    core = AllocatorCore(config.shard_core, pool, seed=0, run_id="test", shard=shard)
    issued = []
    schedule = core.schedule

    def recording(now, actors):
        routed = schedule(now, actors)
        issued.extend(r.item for r in routed)
        return routed

    core.schedule = recording  # type: ignore[method-assign]
    trees = drive(core, SimulatedActor(sim, prompts), steps=steps, rng=rng)
    return core, issued, trees


def test_a_shard_issues_and_emits_only_its_own_prompts_under_its_own_ids():
    shard = ShardConfig(index=1, count=2)
    core, issued, trees = _sharded_run(shard)
    assert trees and issued
    assert all(item.shard == 1 and item.tree_id.startswith("k1-s") for item in issued)
    assert all(shard_of_prompt(prompt_key(item.task), 2) == 1 for item in issued)
    assert all(t.shard == 1 and t.shard_count == 2 and t.tree_id.startswith("k1-s") for t in trees)
    assert all(shard_of_prompt(prompt_key(t.task), 2) == 1 for t in trees)
    # Each step spends at most the shard's half of the step budget.
    spent = Counter()
    for t in trees:
        spent[t.allocator_step] += t.budget_turns
    assert core.config.step_budget_turns == 48 and all(0 < turns <= 48 for turns in spent.values()), spent
    # Every tree of a step says how many trees its shard emitted for that step.
    per_step = Counter(t.allocator_step for t in trees)
    assert all(t.step_tree_count == per_step[t.allocator_step] for t in trees)


def test_shard_zero_of_one_is_the_single_allocator():
    _, issued, trees = _sharded_run(ShardConfig())
    assert all(item.shard == 0 and item.tree_id.startswith("s") for item in issued)
    assert all(t.shard == 0 and t.shard_count == 1 for t in trees)


def test_a_core_drops_nodes_of_another_shards_trees_as_unknown():
    _, _, theirs = _sharded_run(ShardConfig(index=1, count=2), steps=1)
    sim = SimulatorConfig(num_prompts=64)
    prompts = make_prompts(sim, np.random.default_rng(0))
    mine = ShardConfig(index=0, count=2)
    core = AllocatorCore(
        AllocatorCoreConfig(step_budget_turns=48, batch_prompts=2),
        shard_pool([p.task for p in prompts], mine),
        seed=0,
        run_id="test",
        shard=mine,
    )
    core.schedule(0.0, [ActorLoad("a0", 0, 8)])
    tree = theirs[0]
    outcomes = {
        core.on_node(node, 0.0)
        for node in SimulatedActor(sim, prompts).rollout(
            _root_of(tree), actor_id="a0", policy_version=0, rng=np.random.default_rng(1), now=0.0
        )
    }
    assert outcomes == {"unknown_tree"}
    assert {reason for reason, _, _ in core.pop_dropped()} == {"unknown_tree"}


def _root_of(tree):
    return WorkItem(
        run_id="test",
        work_id=f"{tree.tree_id}.w1",
        tree_id=tree.tree_id,
        kind="root",
        task=tree.task,
        num_samples=1,
        parent_id=None,
        prefix_depth=0,
        prefix_token_ids=[],
        env_snapshot=b"",
        sampling=SamplingSpec(),
        max_turns=2,
        min_policy_version=0,
        issued_at=0.0,
        shard=1,
    )
