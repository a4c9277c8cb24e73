import pytest

from allocator.tree import RolloutTree, WorkRecord, at_horizon
from protocol import TaskSpec
from protocol.messages import node_id_for

from .helpers import make_node


def _tree() -> RolloutTree:
    tree = RolloutTree("s0-0", TaskSpec("sim", "task-0"), step=0, opened_at=0.0)
    tree.add_work(WorkRecord("s0-0.w1", None, 0, num_samples=3, max_turns=2, reserved_turns=6))
    return tree


def _build(tree: RolloutTree) -> None:
    # a -> a.b (success), a -> a.c (fail); d -> d.e (success)
    for node in [
        make_node("a", None),
        make_node("a.b", "a", done=True, reward=1.0),
        make_node("a.c", "a", done=True, reward=0.0),
        make_node("d", None),
        make_node("d.e", "d", done=True, reward=1.0),
    ]:
        assert tree.add(node, now=0.0)[0] == "accepted"


def test_backup_values_and_visits_match_hand_computation():
    tree = _tree()
    _build(tree)
    a, d = tree.nodes["a"], tree.nodes["d"]
    assert (a.leaves, a.value) == (2, 0.5)
    assert (d.leaves, d.value) == (1, 1.0)
    # root: (1/3) * (2 * 0.5 + 1 * 1.0) = 2/3, the fraction of successful leaves
    assert tree.leaves == 3 and tree.successes == 2 and tree.mixed
    assert tree.work["s0-0.w1"].finished_chains == 3 and tree.work["s0-0.w1"].turns_used == 5


def test_real_valued_rewards_are_clipped_and_averaged():
    tree = _tree()
    tree.add(make_node("a", None), 0.0)
    tree.add(make_node("a.b", "a", done=True, reward=0.3), 0.0)
    tree.add(make_node("a.c", "a", done=True, reward=1.7), 0.0)
    assert tree.nodes["a"].value == pytest.approx((0.3 + 1.0) / 2)
    assert tree.nodes["a"].successes == 1  # only the full (clipped) reward is a success


def test_partial_credit_is_not_a_success_outcome():
    # A webshop look-alike bought with its option unchosen scores 0.75: value, not success.
    tree = _tree()
    tree.add(make_node("a", None), 0.0)
    tree.add(make_node("a.b", "a", done=True, reward=0.75), 0.0)
    tree.add(make_node("a.c", "a", done=True, reward=1.0), 0.0)
    assert tree.nodes["a"].value == pytest.approx(0.875)
    assert (tree.nodes["a"].successes, tree.nodes["a"].failures) == (1, 1)


def test_duplicates_are_idempotent():
    tree = _tree()
    _build(tree)
    assert tree.add(make_node("a.b", "a", done=True, reward=1.0), 0.0)[0] == "duplicate"
    assert tree.leaves == 3 and tree.work["s0-0.w1"].turns_used == 5


def test_orphans_wait_for_parent_and_are_released_in_order():
    tree = _tree()
    assert tree.add(make_node("a.b.c", "a.b", done=True, reward=1.0), 0.0)[0] == "buffered_orphan"
    assert tree.add(make_node("a.b.c", "a.b", done=True, reward=1.0), 0.5)[0] == "duplicate"
    assert tree.add(make_node("a.b", "a"), 1.0)[0] == "buffered_orphan"
    outcome, attached = tree.add(make_node("a", None), 2.0)
    assert outcome == "accepted"
    assert [n.node_id for n in attached] == ["a", "a.b", "a.b.c"]
    assert tree.nodes["a"].leaves == 1 and not tree.orphans and not tree.orphan_ids


def test_orphans_expire_after_timeout():
    tree = _tree()
    tree.add(make_node("x.y", "x"), now=0.0)
    assert tree.expire_orphans(now=5.0, timeout_s=10.0) == []
    assert tree.expire_orphans(now=11.0, timeout_s=10.0) == ["x.y"]
    assert not tree.orphans and not tree.orphan_ids


def test_prefix_tokens_concatenate_prompt_actions_and_observations():
    tree = _tree()
    _build(tree)
    assert tree.prefix_token_ids("a.b") == [1, 2, 7, 7, 8, 9, 7, 7, 8, 9]


def test_completed_tree_keeps_only_complete_paths():
    tree = _tree()
    _build(tree)
    tree.add(make_node("f", None), 0.0)  # a chain that never finished
    completed, left_out = tree.to_completed(run_id="test", strategy="trace", status="partial", now=1.0)
    assert left_out == 1
    ids = [n.node_id for n in completed.nodes]
    assert ids == ["a", "a.b", "a.c", "d", "d.e"]  # parents before children
    assert list(completed.prompt_token_ids) == [1, 2]
    assert [n.reward for n in completed.nodes] == [None, 1.0, 0.0, None, 1.0]
    assert [n.done for n in completed.nodes] == [False, True, True, False, True]


def test_tree_without_complete_path_is_not_emitted():
    tree = _tree()
    tree.add(make_node("a", None), 0.0)
    completed, left_out = tree.to_completed(run_id="test", strategy="grpo", status="partial", now=1.0)
    assert completed is None and left_out == 1


def test_chain_ends_at_item_turn_cap_without_done():
    tree = _tree()
    tree.add(make_node("a", None), 0.0)
    tree.add(make_node("a.b", "a"), 0.0)  # depth 2 = prefix 0 + max_turns 2
    assert tree.work["s0-0.w1"].finished_chains == 1


def test_a_chain_open_at_the_horizon_is_a_failed_episode():
    open_mid = make_node("a.b", "a")
    assert open_mid.depth == 2 and at_horizon(open_mid, horizon=5) is open_mid
    ended = make_node("a.b.c", "a.b", done=True, reward=1.0)
    assert at_horizon(ended, horizon=3) is ended  # the environment's ending stands
    cut = at_horizon(make_node("a.b.c", "a.b"), horizon=3)
    assert (cut.done, cut.reward, cut.node_id, cut.depth) == (True, 0.0, "a.b.c", 3)


def test_mixed_branch_groups_count_expanded_prefixes_with_both_outcomes_below():
    tree = _tree()
    for node in [
        make_node("a", None),
        make_node("a.b", "a", done=True, reward=1.0),
        make_node("a.c", "a"),
        make_node("a.c.d", "a.c", done=True, reward=0.0),
        make_node("a.c.e", "a.c", done=True, reward=1.0),  # a: {1, 0, 1} and a.c: {0, 1} are mixed
        make_node("f", None),
        make_node("f.g", "f", done=True, reward=0.0),
        make_node("f.h", "f", done=True, reward=0.2),  # both failures: a group without a gradient
        make_node("i", None),
        make_node("i.j", "i"),
        make_node("i.j.k", "i.j", done=True, reward=1.0),
        make_node("i.j.l", "i.j", done=True, reward=0.0),  # i.j is mixed
        make_node("i.m", "i"),  # never finished: i has one child with a leaf, so no sibling group
    ]:
        tree.add(node, 0.0)
    assert tree.nodes["i"].successes == 1 and tree.nodes["i"].leaves == 2
    assert tree.mixed_branch_groups == 3  # a, a.c, i.j
    assert tree.mixed  # the root group, counted apart


def test_an_unbranched_tree_has_no_branch_groups():
    tree = _tree()
    _build(tree)  # a has two children but d has one: only a is a sibling group, and it is mixed
    assert tree.mixed_branch_groups == 1
    chain = _tree()
    for node in [
        make_node("a", None),
        make_node("a.b", "a", done=True, reward=1.0),
        make_node("c", None),
        make_node("c.d", "c", done=True, reward=0.0),
    ]:
        chain.add(node, 0.0)
    assert chain.mixed and chain.mixed_branch_groups == 0


def _sampled(
    sampling: str,
    sample: int,
    depth: int,
    *,
    work_id: str = "s0-0.w1",
    parent: str | None = None,
    prefix_depth: int = 0,
    **kw,
):
    """A node named as an actor names it; the chain's first turn hangs under the item's ``parent``."""
    node_id = node_id_for(work_id, sampling, sample, depth)
    parent_id = parent if depth == prefix_depth + 1 else node_id_for(work_id, sampling, sample, depth - 1)
    return make_node(node_id, parent_id, work_id=work_id, depth=depth, **kw)


def test_a_redelivered_items_new_sampling_ends_its_slots_and_the_abandoned_chain_is_left_out():
    tree = RolloutTree("s0-0", TaskSpec("sim", "task-0"), step=0, opened_at=0.0)
    tree.add_work(WorkRecord("s0-0.w1", None, 0, num_samples=2, max_turns=3, reserved_turns=6))
    record = tree.work["s0-0.w1"]
    # Sampling A ended chain 0, then its actor died one turn into chain 1.
    for node in (_sampled("A", 0, 1), _sampled("A", 0, 2, done=True, reward=1.0), _sampled("A", 1, 1)):
        assert tree.add(node, 0.0)[0] == "accepted"
    assert (record.finished_chains, record.finished) == (1, False)
    # The item was redelivered: sampling B runs both chains again, under ids of its own.
    for node in (_sampled("B", 0, 1), _sampled("B", 0, 2, done=True, reward=0.0)):
        assert tree.add(node, 1.0)[0] == "accepted"
    assert (record.finished_chains, record.finished) == (1, False)  # slot 0 was ended already
    for node in (_sampled("B", 1, 1), _sampled("B", 1, 2, done=True, reward=1.0)):
        tree.add(node, 2.0)
    assert (record.finished_chains, record.finished) == (2, True)
    completed, left_out = tree.to_completed(run_id="test", strategy="trace", status="complete", now=3.0)
    assert left_out == 1  # A's chain 1 never ended: no reward, so no path
    assert {(n.node_id, n.parent_id) for n in completed.nodes} == {
        ("s0-0.w1/A/0/1", None),
        ("s0-0.w1/A/0/2", "s0-0.w1/A/0/1"),
        ("s0-0.w1/B/0/1", None),
        ("s0-0.w1/B/0/2", "s0-0.w1/B/0/1"),
        ("s0-0.w1/B/1/1", None),
        ("s0-0.w1/B/1/2", "s0-0.w1/B/1/1"),
    }


def test_a_branch_origin_waits_for_each_slot_once_whichever_sampling_ends_it():
    tree = RolloutTree("s0-0", TaskSpec("sim", "task-0"), step=0, opened_at=0.0)
    tree.add(make_node("p", None), 0.0)
    tree.add_work(WorkRecord("s0-0.w2", "p", 1, num_samples=2, max_turns=1, reserved_turns=2))
    tree.add_work(WorkRecord("s0-0.w3", "p", 1, num_samples=1, max_turns=1, reserved_turns=1))
    assert tree.nodes["p"].pending_children == 3
    for sampling in ("A", "B"):  # both samplings end slot 0 of w2
        tree.add(_sampled(sampling, 0, 2, work_id="s0-0.w2", parent="p", prefix_depth=1), 0.0)
    assert tree.nodes["p"].pending_children == 2  # w2's slot 1 and w3's are still running
