"""The rollout loop against a scripted engine and a test-double environment (no vLLM)."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from transformers import AutoTokenizer

from actors.episode import (
    EpisodeContext,
    EpisodeError,
    collect_work_item,
    new_sampling,
    parent_id_for,
    turn_outcome,
)
from environments.base import StepResult
from protocol.messages import chain_slot, node_id_for
from tests.actors.doubles import CountingEnvironment, ScriptedEngine, make_item

CTX = EpisodeContext(actor_id="a1", max_model_len=512, sampling="s1")


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):
    return AutoTokenizer.from_pretrained(random_model_dir)


def run(coro):
    return asyncio.run(coro)


def test_turn_outcome_routes_terminal_truncated_and_open_turns():
    assert turn_outcome(StepResult("o", True, 1.0), 2, 4, 10, 100) == turn_outcome(
        StepResult("o", True, 1.0), 4, 4, 10, 100
    )
    assert turn_outcome(StepResult("o", True, 1.0), 2, 4, 10, 100).reward == 1.0
    last = turn_outcome(StepResult("o", False, 0.0), 4, 4, 10, 100)
    assert (last.done, last.reward, last.truncated) == (True, 0.0, True)
    full = turn_outcome(StepResult("o", False, 0.0), 1, 4, 100, 100)
    assert (full.done, full.reward, full.truncated) == (True, 0.0, True)
    open_turn = turn_outcome(StepResult("o", False, 0.0), 1, 4, 99, 100)
    assert (open_turn.done, open_turn.reward) == (False, None)


def test_parent_ids_chain_from_the_item_parent():
    root = make_item()
    assert parent_id_for(root, "s1", 0, 1) is None
    assert parent_id_for(root, "s1", 2, 3) == node_id_for("w1", "s1", 2, 2) == "w1/s1/2/2"
    branch = make_item("branch", parent_id="p", prefix_depth=2, prefix_token_ids=[1, 2], env_snapshot=b"\x80")
    assert parent_id_for(branch, "s1", 1, 3) == "p"
    assert parent_id_for(branch, "s1", 1, 4) == node_id_for("w1", "s1", 1, 3)


def test_root_item_runs_k_concurrent_chains_with_valid_nodes(tokenizer):
    engine = ScriptedEngine(tokenizer, answer_after=2)
    nodes = run(collect_work_item(engine, CountingEnvironment, make_item(num_samples=3), CTX))
    assert engine.max_concurrent == 3
    assert len(nodes) == 9  # 3 chains x (2 searches + 1 answer)
    by_id = {n.node_id: n for n in nodes}
    assert len(by_id) == 9
    for n in nodes:
        assert n.actor_id == "a1" and n.tree_id == "tree1" and n.policy_version == 0
        assert len(n.action_token_ids) == len(n.behaviour_logprobs) > 0
        assert list(n.observation_token_ids) == tokenizer.encode(n.observation_text, add_special_tokens=False)
        if n.depth == 1:
            assert n.parent_id is None and n.prompt_token_ids
        else:
            assert by_id[n.parent_id].depth == n.depth - 1 and not n.prompt_token_ids
        assert msgpack.unpackb(n.env_snapshot)["actions"][-1] == n.action_text
    leaves = [n for n in nodes if n.done]
    assert len(leaves) == 3 and all(n.reward == 1.0 and n.depth == 3 for n in leaves)
    # Distinct chains get distinct seeds, so k samples do not collapse into one continuation.
    assert len({seed for _, seed in engine.calls}) == len(engine.calls)


def test_a_sampling_regenerates_its_ids_and_another_sampling_shares_none(tokenizer):
    first = run(collect_work_item(ScriptedEngine(tokenizer), CountingEnvironment, make_item(), CTX))
    # The same sampling again (a node published twice): the same ids, which the stream stores once.
    again = run(collect_work_item(ScriptedEngine(tokenizer), CountingEnvironment, make_item(), CTX))
    assert {n.node_id: n.parent_id for n in first} == {n.node_id: n.parent_id for n in again}
    # A redelivered item is a new sampling: no id in common, and every parent is its own.
    other = EpisodeContext(actor_id="a2", max_model_len=512, sampling="s2")
    redone = run(collect_work_item(ScriptedEngine(tokenizer), CountingEnvironment, make_item(), other))
    assert not {n.node_id for n in first} & {n.node_id for n in redone}
    redone_ids = {n.node_id for n in redone}
    assert all(n.parent_id is None or n.parent_id in redone_ids for n in redone)
    # Both samplings fill the same chain slots, which is how the allocator tells an item done.
    assert (
        sorted({chain_slot(n.node_id) for n in first}) == sorted({chain_slot(n.node_id) for n in redone}) == [0, 1, 2]
    )


def test_every_sampling_has_a_new_name_without_a_slash():
    names = {new_sampling() for _ in range(100)}
    assert len(names) == 100 and not any("/" in name for name in names)


def test_the_environments_turn_cap_ends_the_episode_with_reward_zero(tokenizer):
    nodes = run(
        collect_work_item(
            ScriptedEngine(tokenizer, answer_after=9), CountingEnvironment, make_item(max_turns=9, num_samples=1), CTX
        )
    )
    assert [n.depth for n in nodes] == [1, 2, 3, 4]  # CountingEnvironment.max_turns
    assert nodes[-1].done and nodes[-1].reward == 0.0 and not any(n.done for n in nodes[:-1])


def test_an_items_turn_allowance_stops_the_chain_without_ending_the_episode(tokenizer):
    # Search strategies advance one turn per item and continue from the open node.
    nodes = run(
        collect_work_item(
            ScriptedEngine(tokenizer, answer_after=9), CountingEnvironment, make_item(max_turns=2, num_samples=1), CTX
        )
    )
    assert [(n.depth, n.done, n.reward) for n in nodes] == [(1, False, None), (2, False, None)]


def test_branch_max_turns_counts_turns_of_this_item_not_depth(tokenizer):
    branch = make_item(
        "branch",
        parent_id="p",
        prefix_depth=2,
        prefix_token_ids=[1, 2],
        max_turns=1,
        num_samples=2,
        env_snapshot=msgpack.packb({"actions": ["<search> x </search>"] * 2}),
    )
    nodes = run(collect_work_item(ScriptedEngine(tokenizer, answer_after=9), CountingEnvironment, branch, CTX))
    assert sorted((n.depth, n.done, n.reward) for n in nodes) == [(3, False, None), (3, False, None)]
    last = make_item(
        "branch",
        parent_id="p",
        prefix_depth=3,
        prefix_token_ids=[1, 2],
        max_turns=1,
        num_samples=1,
        env_snapshot=msgpack.packb({"actions": ["<search> x </search>"] * 3}),
    )
    nodes = run(collect_work_item(ScriptedEngine(tokenizer, answer_after=9), CountingEnvironment, last, CTX))
    assert [(n.depth, n.done, n.reward) for n in nodes] == [(4, True, 0.0)]  # the environment's cap


def test_branch_continues_from_snapshot_and_prefix(tokenizer):
    engine = ScriptedEngine(tokenizer, answer_after=2)
    root_nodes = run(collect_work_item(engine, CountingEnvironment, make_item(num_samples=1), CTX))
    first = root_nodes[0]
    prefix = [*first.prompt_token_ids, *first.action_token_ids, *first.observation_token_ids]
    branch = make_item(
        "branch",
        work_id="w2",
        num_samples=2,
        parent_id=first.node_id,
        prefix_depth=1,
        prefix_token_ids=prefix,
        env_snapshot=first.env_snapshot,
    )
    engine = ScriptedEngine(tokenizer, answer_after=2)
    nodes = run(collect_work_item(engine, CountingEnvironment, branch, CTX))
    assert sorted((n.depth, n.parent_id) for n in nodes) == sorted(
        [(2, first.node_id), (2, first.node_id), (3, node_id_for("w2", "s1", 0, 2)), (3, node_id_for("w2", "s1", 1, 2))]
    )
    assert all(call[0][: len(prefix)] == prefix for call in engine.calls)
    leaves = [n for n in nodes if n.done]
    # The restored env remembers the first search: the answer is its third action, as on the root chain.
    assert [len(msgpack.unpackb(n.env_snapshot)["actions"]) for n in leaves] == [3, 3]
    assert all(n.reward == 1.0 and not n.prompt_token_ids for n in nodes if n.done)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"env_snapshot": b"\xc1garbage"}, "corrupt_snapshot"),
        ({"env_snapshot": msgpack.packb({"actions": 5})}, "corrupt_snapshot"),
        ({"env_snapshot": msgpack.packb([1, 2])}, "corrupt_snapshot"),
        ({"prefix_depth": 4, "env_snapshot": msgpack.packb({"actions": []})}, "no_turns_left"),
    ],
)
def test_bad_branch_items_are_rejected_before_any_generation(tokenizer, overrides, reason):
    fields = {"parent_id": "p", "prefix_depth": 1, "prefix_token_ids": [1]}
    fields.update(overrides)
    engine = ScriptedEngine(tokenizer)
    with pytest.raises(EpisodeError) as err:
        run(collect_work_item(engine, CountingEnvironment, make_item("branch", **fields), CTX))
    assert err.value.reason == reason and engine.calls == []


def test_unknown_task_is_rejected(tokenizer):
    from protocol.messages import TaskSpec

    with pytest.raises(EpisodeError) as err:
        run(
            collect_work_item(
                ScriptedEngine(tokenizer), CountingEnvironment, make_item(task=TaskSpec("counting", "missing-1")), CTX
            )
        )
    assert err.value.reason == "unknown_task"


def test_a_prefix_longer_than_the_context_is_rejected(tokenizer):
    branch = make_item(
        "branch",
        parent_id="p",
        prefix_depth=1,
        prefix_token_ids=[1] * 600,
        env_snapshot=msgpack.packb({"actions": ["<search> x </search>"]}),
    )
    engine = ScriptedEngine(tokenizer)
    with pytest.raises(EpisodeError) as err:
        run(collect_work_item(engine, CountingEnvironment, branch, CTX))
    assert err.value.reason == "context_too_long" and engine.calls == []


def test_search_strategies_advance_turn_by_turn_through_the_real_episode_loop(tokenizer):
    """The allocator core's TSR items run through the actor's episode loop: each one-turn item
    leaves its chain open, the core continues from the best candidate, and every chain ends in
    a finished episode (a regression: one-turn items used to end the episode as failures)."""
    from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
    from protocol.messages import TaskSpec

    tasks = [TaskSpec("counting", f"t{i}") for i in range(8)]
    for strategy in ("tsr-bon", "tsr-beam"):
        core = AllocatorCore(
            AllocatorCoreConfig(
                strategy=strategy,
                group_size=2,
                tsr_width=2,
                max_turns=4,
                step_budget_turns=64,
                max_open_steps=1,
                max_items_per_call=1000,
                plan_units_per_call=10**9,
            ),
            tasks,
            seed=0,
        )
        actors = [ActorLoad("a1", 0, 1000)]
        issued = core.schedule(0.0, actors)
        first_step_trees = {r.item.tree_id for r in issued}
        rounds, now, trees = 0, 1.0, []
        while issued:
            rounds += 1
            for routed in issued:
                for node in run(
                    collect_work_item(ScriptedEngine(tokenizer, answer_after=2), CountingEnvironment, routed.item, CTX)
                ):
                    core.on_node(node, now)
            issued = [r for r in core.schedule(now, actors) if r.item.tree_id in first_step_trees]
            trees += [t for t in core.pop_completed(now) if t.tree_id in first_step_trees]
            now += 1.0
        assert rounds >= 3, strategy  # two searches and an answer, one turn per item
        assert {t.tree_id for t in trees} == first_step_trees, strategy
        leaves = [n for t in trees for n in t.nodes if n.done]
        assert leaves and all(n.depth == 3 and n.reward == 1.0 for n in leaves), strategy
