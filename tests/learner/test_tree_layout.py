from __future__ import annotations

import random

import pytest
import torch

from learner.packing import forward_groups
from learner.tree_layout import (
    block_structure,
    concatenate,
    dense_mask,
    padded,
    query_chunks,
    subtree_ends,
    tree_segments,
)


def random_preorder_parents(rng: random.Random, nodes: int) -> list[int]:
    """A random forest in preorder: each node hangs under some node on the current root path."""
    parent, path = [], []
    for i in range(nodes):
        path = path[: rng.randrange(len(path) + 1)]
        parent.append(path[-1] if path else -1)
        path.append(i)
    return parent


def random_layout(rng: random.Random, trees: int):
    layouts, reference = [], []
    for _ in range(trees):
        nodes = rng.randint(1, 7)
        parent = random_preorder_parents(rng, nodes)
        lengths = [rng.choice([0, 1, rng.randint(2, 15)]) for _ in range(nodes)]
        prompt = rng.randint(1, 9)
        layouts.append(tree_segments(lengths, parent, prompt))
        reference.append((parent, lengths, prompt))
    return concatenate(layouts), reference


def reference_mask(trees) -> torch.Tensor:
    """The rule spelled out token by token: same tree, key's node on the query's root path, key not later."""
    owner = []  # (tree, node or -1 for the prompt) per token
    parents = []
    for t, (parent, lengths, prompt) in enumerate(trees):
        parents.append(parent)
        owner += [(t, -1)] * prompt
        for node, count in enumerate(lengths):
            owner += [(t, node)] * count

    def root_path(t: int, node: int) -> set[int]:
        path = {-1}
        while node != -1:
            path.add(node)
            node = parents[t][node]
        return path

    n = len(owner)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q, (tq, nq) in enumerate(owner):
        visible = root_path(tq, nq)
        for k in range(q + 1):
            tk, nk = owner[k]
            mask[q, k] = tk == tq and nk in visible
    return mask


def test_subtree_ends_of_a_hand_drawn_tree():
    #   0 -> 1 -> 2, 0 -> 3, then a second top-level node 4 -> 5
    assert subtree_ends([-1, 0, 1, 0, -1, 4]) == [4, 3, 3, 4, 6, 6]


@pytest.mark.parametrize("parent", [[-1, -1, 0], [1, -1], [-1, 0, -1, 1]])
def test_subtree_ends_rejects_orders_that_are_not_preorder(parent):
    with pytest.raises(ValueError):
        subtree_ends(parent)


def test_layout_of_a_small_tree():
    # prompt of 2, node a (3 tokens) with children b (1) and c (1), as in test_packing
    layout = tree_segments([3, 1, 1], [-1, 0, 0], 2)
    assert layout.segment.tolist() == [0, 0, 1, 1, 1, 2, 3]
    assert layout.segment_end.tolist() == [4, 4, 4, 4, 4, 3, 4]
    assert dense_mask(layout)[6].int().tolist() == [1, 1, 1, 1, 1, 0, 1]


def test_dense_mask_equals_the_rule_spelled_out_for_several_trees():
    rng = random.Random(0)
    for _ in range(20):
        layout, trees = random_layout(rng, rng.randint(1, 4))
        assert torch.equal(dense_mask(layout), reference_mask(trees))


def test_trees_with_tokenless_last_nodes_do_not_see_each_other():
    first = tree_segments([2, 0], [-1, 0], 1)  # node 1 has no tokens but reserves id 2
    second = tree_segments([2], [-1], 1)
    mask = dense_mask(concatenate([first, second]))
    assert mask[3:, :3].sum() == 0
    assert torch.equal(mask[3:, 3:], torch.ones(3, 3, dtype=torch.bool).tril())


def test_pad_tokens_see_only_themselves_and_are_seen_by_nobody():
    layout = padded(tree_segments([2], [-1], 2), 7)
    mask = dense_mask(layout)
    assert mask[:4, 4:].sum() == 0 and mask[4:, :4].sum() == 0
    assert torch.equal(mask[4:, 4:].diagonal(), torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("block", [1, 4, 8])
def test_block_structure_matches_the_tiles_of_the_dense_mask(block):
    rng = random.Random(block)
    for _ in range(10):
        layout, _ = random_layout(rng, rng.randint(1, 4))
        layout = padded(layout, -(-layout.length // block) * block)
        tiles = dense_mask(layout).reshape(layout.length // block, block, layout.length // block, block)
        any_pair = tiles.any(dim=3).any(dim=1)
        all_pairs = tiles.all(dim=3).all(dim=1)
        structure = block_structure(layout, block)
        diagonal = torch.eye(layout.length // block, dtype=torch.bool)
        # Exact below the diagonal; diagonal tiles are always evaluated pair by pair.
        assert torch.equal(structure.any_allowed & ~diagonal, any_pair & ~diagonal)
        assert torch.equal(structure.full, all_pairs & ~diagonal)
        assert structure.any_allowed.diagonal().all()


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
def test_query_chunks_hold_every_visible_key_and_the_rule_on_them(chunk):
    rng = random.Random(chunk)
    for _ in range(10):
        layout, _ = random_layout(rng, rng.randint(1, 4))
        dense = dense_mask(layout)
        chunks = query_chunks(layout, chunk)
        covered = torch.zeros_like(dense)
        for start, keys, mask in zip(chunks.starts, chunks.keys, chunks.mask, strict=True):
            rows = slice(start, start + mask.shape[0])
            assert torch.equal(mask, dense[rows][:, keys])
            covered[rows, keys] = mask
        assert torch.equal(covered, dense)
        # keys of a chunk are never later than its last query
        assert all(
            int(k.max()) < s + m.shape[0] for s, k, m in zip(chunks.starts, chunks.keys, chunks.mask, strict=True)
        )


def test_forward_groups_fill_the_token_budget_in_order():
    assert forward_groups([3, 4, 2, 5, 9, 1], 9) == [[0, 1, 2], [3], [4], [5]]
    assert forward_groups([3, 4, 2], 0) == [[0], [1], [2]]
    assert forward_groups([12, 1, 1], 10) == [[0], [1, 2]]
    assert forward_groups([], 10) == []
