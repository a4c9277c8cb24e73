from __future__ import annotations

import pytest

from learner.sequences import NO_NODE, NO_VERSION, TreeRejected, path_sequences, prepare_tree
from tests.learner.trees import node, packed_token_count, tree


def small_tree(versions=(0, 0, 0, 0)):
    return tree(
        [1, 2],
        [
            node("a", None, 1, [10, 11], [20], version=versions[0]),
            node("b", "a", 2, [12], [], reward=1.0, version=versions[1]),
            node("c", "a", 2, [13, 14], [], reward=0.0, version=versions[2]),
            node("d", None, 1, [15], [], reward=0.0, version=versions[3]),
        ],
    )


def test_paths_are_prompt_then_action_observation_per_turn():
    t = prepare_tree(small_tree(), learner_version=0, staleness_eta=4)
    assert t.node_ids == ("a", "b", "c", "d")
    assert t.parent == (NO_NODE, 0, 0, NO_NODE)
    assert t.paths == ((0, 1), (0, 2), (3,))
    assert t.reward == (None, 1.0, 0.0, 0.0)
    first, second, third = path_sequences(t)
    assert first.token_ids == (1, 2, 10, 11, 20, 12)
    assert first.action_mask == (0, 0, 1, 1, 0, 1)
    assert first.loss_mask == (0, 0, 1, 1, 0, 1)
    # A message holds its logprobs as float32 from the moment it is built: -1.1 is the nearest float32.
    assert first.behaviour_logprobs == pytest.approx((0.0, 0.0, -1.0, -1.1, 0.0, -1.0), rel=1e-7)
    assert first.behaviour_logprobs[3] != -1.1
    assert first.policy_version == (NO_VERSION, NO_VERSION, 0, 0, NO_VERSION, 0)
    assert first.node_index == (NO_NODE, NO_NODE, 0, 0, 0, 1)
    assert second.token_ids == (1, 2, 10, 11, 20, 13, 14)
    assert second.node_index[-2:] == (2, 2)
    assert third.token_ids == (1, 2, 15)
    assert third.leaf_index == 3


def test_token_counts_packed_against_unpacked():
    t = prepare_tree(small_tree(), learner_version=0, staleness_eta=4)
    assert t.path_multiplicity() == (2, 1, 1, 1)
    action, stale, total = t.path_token_counts()
    assert (action, stale, total) == (2 * 2 + 1 + 2 + 1, 0, 6 + 7 + 3)
    assert packed_token_count(t) == 2 + 3 + 1 + 2 + 1


def test_stale_tokens_leave_the_loss_and_are_counted():
    # learner at version 5, eta 2: version 2 lags by 3 (stale), version 3 by 2 (kept).
    t = prepare_tree(small_tree(versions=(2, 3, 3, 5)), learner_version=5, staleness_eta=2)
    assert t.stale == (True, False, False, False)
    first = path_sequences(t)[0]
    assert first.action_mask == (0, 0, 1, 1, 0, 1)
    assert first.loss_mask == (0, 0, 0, 0, 0, 1)
    assert sum(first.action_mask) - sum(first.loss_mask) == 2  # node a's stale tokens
    assert t.path_token_counts()[1] == 4  # node a's 2 tokens on 2 paths


def test_partial_tree_keeps_only_complete_paths():
    nodes = [
        node("a", None, 1, [10], [20]),
        node("b", "a", 2, [12], [], reward=1.0),
        node("c", "a", 2, [13], [21]),  # waiting for a continuation that never came
        node("d", None, 1, [15], [22]),  # same, under the root
    ]
    t = prepare_tree(tree([1], nodes), learner_version=0, staleness_eta=0)
    assert t.node_ids == ("a", "b")
    assert t.paths == ((0, 1),)
    assert t.dropped_incomplete_nodes == 2


def _reason(bad_tree, **kwargs) -> str:
    with pytest.raises(TreeRejected) as info:
        prepare_tree(bad_tree, **{"learner_version": 3, "staleness_eta": 1, **kwargs})
    return info.value.reason


def test_rejects_a_policy_version_newer_than_the_learner():
    assert _reason(small_tree(versions=(0, 4, 0, 0))) == "unknown_version"


def test_rejects_bad_structure_and_tokens():
    assert _reason(tree([1], [node("a", None, 1, [3], [4])])) == "no_complete_path"
    assert _reason(tree([1], [node("a", None, 2, [3], [], reward=1.0)])) == "bad_depth"
    assert _reason(small_tree(), vocab_size=15) == "token_out_of_vocab"
    assert _reason(tree([], [node("a", None, 1, [3], [], reward=1.0)])) == "empty_prompt"
    terminal_parent = tree([1], [node("a", None, 1, [3], [], reward=1.0), node("b", "a", 2, [4], [], reward=0.0)])
    assert _reason(terminal_parent) == "terminal_with_children"
