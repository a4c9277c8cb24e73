"""Pure helpers of the process shells: held-out probes, CPU pinning, metrics, batch stats."""

import json

import pytest

from allocator.heldout import HeldoutConfig, HeldoutProbes, is_probe_tree
from allocator.service import live_actor_loads
from learner.service import tree_batch_stats
from protocol import CompletedTree, Heartbeat, TaskSpec, TreeNodeRecord, TurnNode
from tracerl.metrics import MetricsWriter, metrics_path, read_metrics
from tracerl.report import collect_curves
from tracerl.supervisor import parse_cpu_list


def _terminal(tree_id: str, reward: float) -> TurnNode:
    return TurnNode(
        run_id="r",
        tree_id=tree_id,
        node_id=f"{tree_id}-n",
        parent_id=None,
        work_id=f"{tree_id}-w",
        actor_id="a",
        task=TaskSpec("multihop", "t"),
        depth=1,
        policy_version=0,
        prompt_token_ids=[1],
        action_token_ids=[2],
        behaviour_logprobs=[-0.1],
        observation_token_ids=[],
        action_text="x",
        observation_text="",
        env_snapshot=b"",
        env_score=0.0,
        done=True,
        reward=reward,
        created_at=0.0,
    )


def test_heldout_probe_tallies_greedy_and_sampled_separately():
    tasks = [TaskSpec("multihop", f"t{i}") for i in range(3)]
    probes = HeldoutProbes(HeldoutConfig(tasks=3, every_versions=2), tasks, "r")
    assert probes.due(0) and not probes.due(1) and probes.due(2)
    items = probes.plan(0, now=10.0)
    assert len(items) == 6 and all(is_probe_tree(i.tree_id) for i in items)
    assert {i.sampling.temperature for i in items} == {0.0, 1.0}
    assert not probes.due(0)  # planned once per version
    rewards = {"greedy": [1.0, 1.0, 0.0], "sampled": [0.0, 1.0, 0.0]}
    for item in items:
        mode = "greedy" if item.sampling.temperature == 0.0 else "sampled"
        index = int(item.tree_id.rsplit("-", 1)[1])
        probes.on_node(_terminal(item.tree_id, rewards[mode][index]), now=12.5)
    [result] = probes.pop_results()
    assert result.greedy_success == pytest.approx(2 / 3)
    assert result.sampled_success == pytest.approx(1 / 3)
    assert result.seconds == pytest.approx(2.5)
    assert probes.pop_results() == []


def test_heldout_probe_counts_only_full_rewards_as_success():
    tasks = [TaskSpec("webshop", f"t{i}") for i in range(2)]
    probes = HeldoutProbes(HeldoutConfig(tasks=2, every_versions=1), tasks, "r")
    rewards = {"greedy": [1.0, 0.9], "sampled": [0.5, 0.0]}
    for item in probes.plan(0, now=0.0):
        mode = "greedy" if item.sampling.temperature == 0.0 else "sampled"
        probes.on_node(_terminal(item.tree_id, rewards[mode][int(item.tree_id.rsplit("-", 1)[1])]), now=1.0)
    [result] = probes.pop_results()
    assert (result.greedy_success, result.sampled_success) == (0.5, 0.0)


def test_live_actor_loads_drop_silent_actors():
    beat = {
        "run_id": "r",
        "policy_version": 0,
        "inflight": 1,
        "capacity": 4,
        "tokens_generated": 0,
        "turns_generated": 0,
        "started_at": 0.0,
    }
    actors = {
        "a": Heartbeat(actor_id="a", sent_at=100.0, **beat),
        "b": Heartbeat(actor_id="b", sent_at=80.0, **beat),
    }
    assert [a.actor_id for a in live_actor_loads(actors, now=105.0, timeout_s=10.0)] == ["a"]


@pytest.mark.parametrize(("spec", "cores"), [("", []), ("0", [0]), ("0-2", [0, 1, 2]), ("3,0-1", [0, 1, 3])])
def test_parse_cpu_list(spec, cores):
    assert parse_cpu_list(spec) == cores


@pytest.mark.parametrize("spec", ["a", "2-1", "-1"])
def test_parse_cpu_list_rejects_garbage(spec):
    with pytest.raises(ValueError):
        parse_cpu_list(spec)


def _record(node_id, parent, reward, done=True):
    return TreeNodeRecord(
        node_id=node_id,
        parent_id=parent,
        depth=1 if parent is None else 2,
        policy_version=0,
        action_token_ids=[1, 2],
        behaviour_logprobs=[-0.1, -0.2],
        observation_token_ids=[],
        done=done,
        reward=reward,
    )


def test_tree_batch_stats_counts_mixed_groups_and_turns():
    mixed = CompletedTree(
        shard=0,
        shard_count=1,
        run_id="r",
        tree_id="t1",
        task=TaskSpec("multihop", "a"),
        strategy="trace",
        allocator_step=0,
        prompt_token_ids=[1],
        nodes=[_record("x", None, None, done=False), _record("y", "x", 1.0), _record("z", "x", 0.0)],
        status="complete",
        budget_turns=3,
        step_tree_count=2,
        created_at=0.0,
    )
    all_fail = CompletedTree(
        shard=0,
        shard_count=1,
        run_id="r",
        tree_id="t2",
        task=TaskSpec("multihop", "b"),
        strategy="trace",
        allocator_step=0,
        prompt_token_ids=[1],
        nodes=[_record("u", None, 0.0), _record("v", None, 0.0)],
        status="complete",
        budget_turns=2,
        step_tree_count=2,
        created_at=0.0,
    )
    stats = tree_batch_stats([mixed, all_fail])
    assert stats["batch.effective_ratio"] == 0.5
    assert stats["batch.reward_mean"] == pytest.approx(0.25)
    assert stats["batch.turns"] == 5 and stats["batch.leaves"] == 4 and stats["batch.generated_tokens"] == 10


def test_metrics_round_trip_and_report_curves(tmp_path):
    learner = MetricsWriter(tmp_path, "learner")
    for step, turns in enumerate([10, 20, 30], start=1):
        learner.write(
            {
                "batch.turns": turns,
                "batch.reward_mean": 0.1 * step,
                "batch.effective_ratio": 0.5,
                "policy_version": step,
                "nan": float("nan"),
            },
            now=float(step),
        )
    learner.close()
    allocator = MetricsWriter(tmp_path, "allocator")
    allocator.write({"heldout.policy_version": 2, "heldout.greedy_success": 0.4, "heldout.sampled_success": 0.3})
    allocator.close()
    with metrics_path(tmp_path, "learner").open("a") as handle:
        handle.write('{"torn": ')  # a writer killed mid-line
    records = list(read_metrics(metrics_path(tmp_path, "learner")))
    assert len(records) == 3 and records[0]["nan"] is None and records[0]["role"] == "learner"
    curves = collect_curves(tmp_path)
    assert curves.samples == [10.0, 30.0, 60.0]
    assert curves.heldout_samples == [30.0] and curves.heldout_greedy == [0.4]
    json.dumps(records)
