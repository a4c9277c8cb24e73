"""The chaos bench's pure parts: the seeded schedules and the node-by-node and tree-by-tree
reconciliations."""

from collections import Counter

import pytest

from bench.chaos import (
    ACTIONS,
    RANDOM_ACTIONS,
    ChaosEvent,
    ChaosOptions,
    ChaosResult,
    DropRecord,
    EventRecord,
    Publication,
    TreeRecord,
    chaos_markdown,
    chaos_schedule,
    describe_bus,
    plan_waves,
    random_markdown,
    random_schedule,
    reconcile,
    reconcile_training,
    runnable_actions,
    version_violations,
)


def _pubs(*pairs):
    return [Publication(v, sha) for v, sha in pairs]


def test_schedule_is_seeded_and_spaced_by_learner_steps():
    a = chaos_schedule(3, ACTIONS, first_step=2, steps_between=3, max_delay_s=4.0)
    assert a == chaos_schedule(3, ACTIONS, first_step=2, steps_between=3, max_delay_s=4.0)
    assert sorted(e.action for e in a) == sorted(ACTIONS)
    assert [e.after_step for e in a] == [2, 5, 8, 11]
    assert all(0.0 <= e.delay_s <= 4.0 for e in a)
    orders = {tuple(e.action for e in chaos_schedule(s, ACTIONS, 1, 1, 0.0)) for s in range(20)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="unknown chaos actions"):
        chaos_schedule(0, ["kill_everything"], 1, 1, 0.0)
    with pytest.raises(ValueError, match=">= 1"):
        ChaosOptions(steps_after=0)


def test_every_node_is_accounted_for():
    nodes = ["a", "b", "c", "d", "e", "f", "f"]  # f was stored twice (regenerated after the window)
    trees = [("s0-0", ["a", "b"]), ("s0-1", ["c", "f"])]
    drops = [DropRecord("left_out", "s0-1", ("d",)), DropRecord("late", "s0-0", ("b",))]
    r = reconcile(nodes, trees, drops, held=["e"], publications=_pubs((0, "x"), (1, "y")), trained_tokens_past_bound=0)
    assert (r.accepted_nodes, r.node_messages, r.nodes_in_trees) == (6, 7, 4)
    # b is in a tree and also recorded late (a redelivered copy): the tree wins.
    assert r.dropped == {"left_out": 1}
    assert r.held_at_stop == 1
    assert r.lost == [] and r.duplicated_in_trees == [] and r.phantom_in_trees == []
    assert r.failures() == []


def test_lost_duplicated_and_phantom_nodes_fail():
    trees = [("s0-0", ["a", "b"]), ("s0-0", ["a", "b"]), ("s1-0", ["z"])]
    r = reconcile(
        ["a", "b", "c", "d"],
        trees,
        [DropRecord("late", "s0-0", ("d",))],
        held=[],
        publications=[],
        trained_tokens_past_bound=0,
    )
    assert r.lost == ["c"]
    assert r.duplicated_in_trees == ["a", "b"] and r.trees_emitted_twice == ["s0-0"]
    assert r.phantom_in_trees == ["z"]
    assert len(r.failures()) == 3


def test_held_nodes_do_not_hide_lost_ones_and_staleness_fails():
    r = reconcile(["a", "b"], [], [], held=["a"], publications=[], trained_tokens_past_bound=12.0)
    assert r.lost == ["b"] and r.held_at_stop == 1
    assert any("staleness" in f for f in r.failures())


def test_versions_must_go_strictly_up():
    assert version_violations(_pubs((0, "a"), (1, "b"), (2, "c"))) == []
    # A restart that announces its version again, even with the same weights, was not recognised.
    assert version_violations(_pubs((0, "a"), (1, "b"), (1, "b"), (2, "c"))) == [(1, 1)]
    # A restart that takes back a version, or names other weights with an old number, fails.
    assert version_violations(_pubs((0, "a"), (3, "d"), (2, "c"))) == [(3, 2)]
    assert version_violations(_pubs((0, "a"), (1, "b"), (1, "e"))) == [(1, 1)]
    r = reconcile([], [], [], [], _pubs((0, "a"), (2, "c"), (1, "b")), 0.0)
    assert not r.versions_strictly_increasing and r.versions == [0, 2, 1]
    assert r.failures() == ["policy versions went [(2, 1)] (must go strictly up)"]


def _result(**changes):
    r = reconcile(["a", "b"], [("s0-0", ["a"])], [DropRecord("left_out", "s0-0", ("b",))], [], _pubs((0, "a")), 0.0)
    fields = {
        "seed": 0,
        "run_dir": "runs/x",
        "wall_seconds": 10.0,
        "learner_steps": 4,
        "finished": True,
        "events": [
            EventRecord("kill_actor", "actor-0", 2, 5.0, "actor-2", 3.5, wave=1),
            EventRecord("stall_actor", "actor-1", 2, 5.0, wave=1, detail="SIGSTOP", ended_s=20.0),
            EventRecord("kill_learner", "learner", 4, 30.0, wave=2),
        ],
        "crashed_roles": [],
        "reconciliation": r,
        "held_recorded": True,
        "training": reconcile_training(["s0-0"], [TreeRecord("trained", ("s0-0",))], []),
        "schedule": "random",
    }
    return ChaosResult(**{**fields, **changes})


def test_markdown_names_every_check_and_the_verdict():
    result = _result()
    text = chaos_markdown(result)
    assert "| 1 | 1 | kill_actor | actor-0 -> actor-2 | 2 | 5.0 |  | 3.5 |  |" in text
    assert "| 2 | 1 | stall_actor | actor-1 | 2 | 5.0 | 20.0 | n/a | SIGSTOP |" in text
    assert "| lost | 0 | yes |" in text and "| trees trained twice | 0 | yes |" in text
    assert "All invariants hold." in text
    broken = _result(finished=False, crashed_roles=["allocator (exit 1)"])
    assert not broken.ok and "FAILED" in chaos_markdown(broken)
    assert "no reconciliation of trees against training" in _result(training=None).failures()
    assert not _result(waiting_read=False).ok
    assert ChaosEvent("kill_learner", 2, 0.5).after_step == 2


def test_random_markdown_has_a_row_per_seed_counting_waves_and_pairs():
    results = [_result(seed=3), _result(seed=4, training=reconcile_training(["s0-0"], [], []))]
    text = random_markdown(results, ChaosOptions(schedule="random", faults=3))
    # 3 faults in 2 waves, one of them a pair; the second seed lost its tree.
    assert "| 3 | 3 | 2 (1) | 4 | 10 | 2 | 0 | 1 | 1 | 0 | 0 | 0 | 0 | yes | yes |" in text
    assert "| 4 | 3 | 2 (1) | 4 | 10 | 2 | 0 | 1 | 0 | 0 | 1 | 0 | 0 | yes | **NO** |" in text
    assert "## Seed 3" in text and "## Seed 4" in text


# ---------------------------------------------------------------------------- random schedule


def test_random_schedule_draws_exactly_n_faults_in_waves_of_one_or_two():
    for seed in range(30):
        for n in range(1, 15):
            waves = random_schedule(seed, n, RANDOM_ACTIONS)
            assert sum(len(w.actions) for w in waves) == n
            assert all(len(w.actions) in (1, 2) for w in waves)
            # The two faults of a pair differ.
            assert all(len(set(w.actions)) == len(w.actions) for w in waves)
            assert all(a in RANDOM_ACTIONS for w in waves for a in w.actions)
            # One wave every steps_between learner steps from first_step.
            assert [w.after_step for w in waves] == [2 + 2 * k for k in range(len(waves))]
            assert all(0.0 <= w.delay_s <= 4.0 for w in waves)


def test_random_schedule_has_a_pair_from_four_faults_on():
    for seed in range(50):
        for n in range(4, 13):
            for actions in (RANDOM_ACTIONS, ("kill_actor", "stall_actor")):
                waves = random_schedule(seed, n, actions, pair_chance=0.0)  # no pair drawn: one is made
                assert sum(1 for w in waves if len(w.actions) == 2) == 1
                assert any(len(w.actions) == 2 for w in random_schedule(seed, n, actions))
    # A single action cannot pair with itself.
    assert all(len(w.actions) == 1 for w in random_schedule(0, 6, ("kill_learner",)))
    # Below four faults a pair is drawn, never made.
    assert all(len(w.actions) == 1 for w in random_schedule(0, 3, RANDOM_ACTIONS, pair_chance=0.0))


def test_random_schedule_uses_every_action_before_repeating_one():
    for seed in range(20):
        counts = Counter(a for w in random_schedule(seed, 8, RANDOM_ACTIONS) for a in w.actions)
        assert set(counts) == set(RANDOM_ACTIONS) and sorted(counts.values()) == [1] * 6 + [2]
        five = (*ACTIONS, "stall_actor")
        assert {a for w in random_schedule(seed, 5, five) for a in w.actions} == set(five)


def test_random_schedule_is_a_function_of_seed_count_and_actions():
    assert random_schedule(7, 8, RANDOM_ACTIONS) == random_schedule(7, 8, RANDOM_ACTIONS)
    assert len({tuple(random_schedule(s, 8, RANDOM_ACTIONS)) for s in range(10)}) == 10
    assert random_schedule(7, 8, RANDOM_ACTIONS) != random_schedule(7, 8, (*ACTIONS, "fill_store"))
    with pytest.raises(ValueError, match="unknown chaos actions"):
        random_schedule(0, 4, ["kill_everything"])
    with pytest.raises(ValueError, match="faults must be >= 1"):
        random_schedule(0, 0, RANDOM_ACTIONS)


def test_actions_a_run_cannot_take_are_left_out_and_said_so():
    keep, notes = runnable_actions(RANDOM_ACTIONS, clustered=False, store_limited=True)
    assert keep == [a for a in RANDOM_ACTIONS if a != "kill_cluster_node"]
    assert notes == ["kill_cluster_node left out: the bus is a single nats-server, not a cluster"]
    keep, notes = runnable_actions(RANDOM_ACTIONS, clustered=True, store_limited=False)
    assert "fill_store" not in keep and "kill_cluster_node" in keep and len(notes) == 1
    unclustered, _ = runnable_actions(RANDOM_ACTIONS, clustered=False, store_limited=True)
    waves, notes = plan_waves(ChaosOptions(schedule="random", faults=8, seed=2), clustered=False, store_limited=True)
    assert waves == random_schedule(2, 8, unclustered) and len(notes) == 1
    assert "kill_cluster_node" not in {a for w in waves for a in w.actions}
    fixed, none = plan_waves(ChaosOptions(seed=3), clustered=False, store_limited=False)
    assert [w.actions[0] for w in fixed] == [e.action for e in chaos_schedule(3, ACTIONS, 2, 2, 4.0)] and not none


def test_options_check_the_schedule_and_its_actions():
    assert ChaosOptions().schedule_actions == ACTIONS
    assert ChaosOptions(schedule="random").schedule_actions == RANDOM_ACTIONS
    with pytest.raises(ValueError, match="unknown chaos actions"):
        ChaosOptions(actions=("stall_actor",))  # the fixed schedule has no stalls
    with pytest.raises(ValueError, match="schedule must be"):
        ChaosOptions(schedule="sometimes")
    with pytest.raises(ValueError, match="outlasts"):
        ChaosOptions(fault_ack_waits=1.0)
    with pytest.raises(ValueError, match="fill_fraction"):
        ChaosOptions(fill_fraction=1.0)


# ---------------------------------------------------------------------------- trees against training


def test_every_tree_is_trained_once_or_still_waits():
    trees = ["t1", "t2", "t3", "t4", "t5", "t5", "t6"]  # t5 was emitted twice: one tree
    records = [
        TreeRecord("trained", ("t1", "t2")),
        # The learner was killed after its checkpoint of t3 and before the record: its
        # successor turned the redelivery away.
        TreeRecord("already_trained", ("t3",)),
        TreeRecord("step_skipped", ("t4",)),
        TreeRecord("trained", ("t5",)),
        TreeRecord("already_trained", ("t5",)),
    ]
    t = reconcile_training(trees, records, waiting=["t6", "t1"])
    assert (t.distinct_trees, t.trained, t.skipped, t.waiting) == (6, 4, 1, 1)
    assert t.lost == [] and t.trained_twice == [] and t.unknown_trained == []
    assert t.failures() == []


def test_lost_twice_trained_and_unknown_trees_fail():
    records = [TreeRecord("trained", ("t1", "x9")), TreeRecord("trained", ("t1",))]
    t = reconcile_training(["t1", "t2", "t3"], records, waiting=["t3", "other"])
    assert t.lost == ["t2"] and t.trained_twice == ["t1"] and t.unknown_trained == ["x9"]
    assert t.waiting == 1 and len(t.failures()) == 3
    with pytest.raises(ValueError, match="unknown learner tree record"):
        reconcile_training([], [TreeRecord("eaten", ("t1",))], [])


def test_the_record_names_the_bus_it_ran_on():
    from bus.config import BusServerConfig
    from tracerl.config import load_config

    assert describe_bus(BusServerConfig()) == "one nats-server"
    caps = ["streams.nodes_max_bytes=4194304", "streams.trees_max_bytes=8388608", "streams.dead_letter_max_bytes=0"]
    cluster = load_config(BusServerConfig, None, ["cluster.name=c", "cluster.local_nodes=3", "max_store_mib=64", *caps])
    assert describe_bus(cluster) == "a 3-node cluster, 3 replicas, store limit 64 MiB"
    assert "the bus: one nats-server." in chaos_markdown(_result(bus="one nats-server"))
