from __future__ import annotations

import math

import pytest

from learner.advantages import (
    backup_values,
    flat_grpo_advantages,
    leaf_counts,
    node_advantages,
    tree_grpo_advantages,
    value_difference_advantages,
)

# prompt ─┬─ a ─┬─ b (r=1)
#         │     └─ c (r=0)
#         └─ d (r=0)
PARENT = (-1, 0, 0, -1)
REWARD = (None, 1.0, 0.0, 0.0)
GROUP_STD = math.sqrt(2 / 9)  # leaves 1, 0, 0: mean 1/3


def close(actual, expected):
    assert actual == pytest.approx(expected, abs=1e-9)


def test_backup_is_the_mean_leaf_reward_of_the_subtree():
    values, root = backup_values(PARENT, REWARD)
    close(values, [0.5, 1.0, 0.0, 0.0])
    close(root, 1 / 3)
    assert leaf_counts(PARENT, REWARD) == [2, 1, 1, 1]


def test_flat_grpo():
    close(flat_grpo_advantages(PARENT, REWARD, normalize_std=False), [1 / 6, 2 / 3, -1 / 3, -1 / 3])
    close(
        flat_grpo_advantages(PARENT, REWARD, normalize_std=True, eps=0.0),
        [(1 / 6) / GROUP_STD, math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2)],
    )


def test_tree_grpo_is_sibling_term_plus_group_term():
    # siblings (a, d): values 0.5, 0 -> mean 0.25, std 0.25; siblings (b, c): 1, 0 -> 0.5, 0.5
    close(
        tree_grpo_advantages(PARENT, REWARD, normalize_std=False),
        [0.25 + 1 / 6, 0.5 + 2 / 3, -0.5 - 1 / 3, -0.25 - 1 / 3],
    )
    close(
        tree_grpo_advantages(PARENT, REWARD, normalize_std=True, eps=0.0),
        [1 + (1 / 6) / GROUP_STD, 1 + math.sqrt(2), -1 - 1 / math.sqrt(2), -1 - 1 / math.sqrt(2)],
    )


def test_tree_grpo_unbranched_node_has_no_sibling_term():
    parent, reward = (-1, 0, -1), (None, 1.0, 0.0)  # a -> b (r=1); d (r=0)
    # (a, d) siblings: 1 vs 0 -> intra +-0.5; b alone under a -> intra 0; group mean 0.5
    close(tree_grpo_advantages(parent, reward, normalize_std=False), [0.5 + 0.5, 0.0 + 0.5, -0.5 - 0.5])


def test_value_difference_uses_the_root_value_for_depth_one():
    close(value_difference_advantages(PARENT, REWARD), [0.5 - 1 / 3, 0.5, -0.5, -1 / 3])


def test_all_equal_rewards_give_zero_advantage_everywhere():
    reward = (None, 1.0, 1.0, 1.0)
    for kind in ("flat_grpo", "tree_grpo", "value_difference"):
        close(node_advantages(kind, PARENT, reward), [0.0] * 4)


def test_bad_trees_and_kinds_raise():
    with pytest.raises(ValueError, match="leaf 1 has no reward"):
        backup_values((-1, 0), (None, None))
    with pytest.raises(ValueError, match="internal node"):
        backup_values((-1, 0), (1.0, 1.0))
    with pytest.raises(ValueError, match="earlier node"):
        backup_values((1, -1), (1.0, None))
    with pytest.raises(ValueError, match="unknown advantage kind"):
        node_advantages("gae", PARENT, REWARD)
