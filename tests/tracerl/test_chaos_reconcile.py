"""The chaos bench's pure parts: the seeded schedule and the node-by-node reconciliation."""

import pytest

from bench.chaos import (
    ACTIONS,
    ChaosEvent,
    ChaosOptions,
    ChaosResult,
    DropRecord,
    EventRecord,
    Publication,
    chaos_markdown,
    chaos_schedule,
    reconcile,
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


def test_markdown_names_every_check_and_the_verdict():
    r = reconcile(["a", "b"], [("s0-0", ["a"])], [DropRecord("left_out", "s0-0", ("b",))], [], _pubs((0, "a")), 0.0)
    result = ChaosResult(
        seed=0,
        run_dir="runs/x",
        wall_seconds=10.0,
        learner_steps=4,
        finished=True,
        events=[EventRecord("kill_actor", "actor-0", 2, 5.0, "actor-2", 3.5)],
        crashed_roles=[],
        reconciliation=r,
        held_recorded=True,
    )
    text = chaos_markdown(result)
    assert "| 1 | kill_actor | actor-0 -> actor-2 | 2 | 5.0 | 3.5 |" in text
    assert "| lost | 0 | yes |" in text and "All invariants hold." in text
    broken = ChaosResult(**{**result.__dict__, "finished": False, "crashed_roles": ["allocator (exit 1)"]})
    assert not broken.ok and "FAILED" in chaos_markdown(broken)
    assert ChaosEvent("kill_learner", 2, 0.5).after_step == 2
