"""Tree-aware advantages, one number per node (pure Python).

A tree is given by ``parent`` (index of each node's parent, ``-1`` under the prompt
root) and ``reward`` (set exactly on leaves). Every token a node's policy generated
gets the node's advantage.

Backup value. V̂(leaf) = its reward; V̂(y) = (1/n_y) Σ_c n_c V̂(c) with n the leaf count,
which is the mean reward of the leaves under y. V̂(root) is the mean over all leaves: the
prompt's group mean. Computed here from the leaves the learner trains on rather than taken
from the allocator's record, so a partial tree's values match its kept paths.

The three kinds, for a node y with parent p (p = root when y has depth 1), leaf rewards
r_1..r_N of the tree, μ = mean r, σ = population std of r, and
norm(x, s) = x / (s + eps) when std normalisation is on, else x:

* ``flat_grpo``: A(y) = norm(V̂(y) − μ, σ). On a leaf that is GRPO's (r − μ)/(σ+eps); an
  internal node gets the mean of its leaves' advantages, so counting a shared node's tokens
  once per path through it reproduces chain GRPO's (unclipped) policy gradient exactly.
* ``tree_grpo``: A(y) = intra(y) + inter(y), where
  intra(y) = norm(V̂(y) − m_p, s_p) with m_p, s_p the mean and population std of V̂ over
  y's siblings including y (the children of p; an unbranched child gets intra 0), and
  inter(y) = norm(V̂(y) − μ, σ), the node against the prompt's whole group. The intra term
  credits the decision made at the branching point; the inter term the outcome overall.
* ``value_difference``: A(y) = V̂(y) − V̂(p) (TreeRL style), with V̂(root) = μ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ROOT = -1


def _children(parent: Sequence[int]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for i, p in enumerate(parent):
        kids.setdefault(p, []).append(i)
    return kids


def _check(parent: Sequence[int], reward: Sequence[float | None]) -> dict[int, list[int]]:
    if len(parent) != len(reward):
        raise ValueError(f"parent ({len(parent)}) and reward ({len(reward)}) differ in length")
    if not parent:
        raise ValueError("a tree needs at least one node")
    kids = _children(parent)
    for i, r in enumerate(reward):
        is_leaf = i not in kids
        if is_leaf and r is None:
            raise ValueError(f"leaf {i} has no reward")
        if not is_leaf and r is not None:
            raise ValueError(f"internal node {i} carries a reward")
    for i, p in enumerate(parent):
        if p != ROOT and not 0 <= p < i:
            raise ValueError(f"node {i}: parent {p} must be an earlier node (ancestors first)")
    return kids


def leaf_counts(parent: Sequence[int], reward: Sequence[float | None]) -> list[int]:
    """n_y: the number of leaves under each node (1 for a leaf)."""
    kids = _check(parent, reward)
    counts = [0] * len(parent)
    for i in reversed(range(len(parent))):  # children come after their parent
        counts[i] = 1 if i not in kids else sum(counts[c] for c in kids[i])
    return counts


def backup_values(parent: Sequence[int], reward: Sequence[float | None]) -> tuple[list[float], float]:
    """(V̂ per node, V̂(root)) by the visit-weighted backup."""
    kids = _check(parent, reward)
    counts = leaf_counts(parent, reward)
    values = [0.0] * len(parent)
    for i in reversed(range(len(parent))):
        if i not in kids:
            values[i] = float(reward[i])  # type: ignore[arg-type]
        else:
            values[i] = sum(counts[c] * values[c] for c in kids[i]) / counts[i]
    top = kids[ROOT]
    root_value = sum(counts[c] * values[c] for c in top) / sum(counts[c] for c in top)
    return values, root_value


def _leaf_stats(reward: Sequence[float | None]) -> tuple[float, float]:
    leaves = [float(r) for r in reward if r is not None]
    mean = sum(leaves) / len(leaves)
    std = math.sqrt(sum((r - mean) ** 2 for r in leaves) / len(leaves))
    return mean, std


def _norm(x: float, std: float, normalize_std: bool, eps: float) -> float:
    return x / (std + eps) if normalize_std else x


def flat_grpo_advantages(
    parent: Sequence[int], reward: Sequence[float | None], normalize_std: bool = True, eps: float = 1e-6
) -> list[float]:
    values, _ = backup_values(parent, reward)
    mean, std = _leaf_stats(reward)
    return [_norm(v - mean, std, normalize_std, eps) for v in values]


def tree_grpo_advantages(
    parent: Sequence[int], reward: Sequence[float | None], normalize_std: bool = True, eps: float = 1e-6
) -> list[float]:
    values, _ = backup_values(parent, reward)
    kids = _children(parent)
    mean, std = _leaf_stats(reward)
    out = []
    for i, v in enumerate(values):
        siblings = kids[parent[i]]
        intra = 0.0
        if len(siblings) > 1:
            sib_values = [values[s] for s in siblings]
            sib_mean = sum(sib_values) / len(sib_values)
            sib_std = math.sqrt(sum((x - sib_mean) ** 2 for x in sib_values) / len(sib_values))
            intra = _norm(v - sib_mean, sib_std, normalize_std, eps)
        inter = _norm(v - mean, std, normalize_std, eps)
        out.append(intra + inter)
    return out


def value_difference_advantages(parent: Sequence[int], reward: Sequence[float | None]) -> list[float]:
    values, root_value = backup_values(parent, reward)
    return [v - (root_value if p == ROOT else values[p]) for v, p in zip(values, parent, strict=True)]


def node_advantages(
    kind: str, parent: Sequence[int], reward: Sequence[float | None], normalize_std: bool = True, eps: float = 1e-6
) -> list[float]:
    if kind == "flat_grpo":
        return flat_grpo_advantages(parent, reward, normalize_std, eps)
    if kind == "tree_grpo":
        return tree_grpo_advantages(parent, reward, normalize_std, eps)
    if kind == "value_difference":
        return value_difference_advantages(parent, reward)
    raise ValueError(f"unknown advantage kind {kind!r}")
