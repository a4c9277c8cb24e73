"""Which packed token may attend to which: the tree attention rule and its sparse forms (pure).

A packed forward lays out one or more trees, each as its prompt followed by its nodes'
action+observation tokens in depth-first preorder, so every node's subtree is a
contiguous run of segments. Each token carries two numbers:

* ``segment``: the preorder id of the segment it belongs to (a tree's prompt, then each of
  its nodes; the trees of one forward get consecutive, disjoint id ranges);
* ``segment_end``: one past the last segment id of that segment's subtree.

Token q may attend to token k exactly when k's segment is an ancestor-or-self of q's and
k comes no later than q::

    segment[k] <= segment[q] < segment_end[k]  and  k <= q

``allowed`` is that rule; the dense reference mask, the FlexAttention block mask and the
key lists of the chunked training path are all derived from it, never restated. Because
segment ids never decrease along the sequence, a block of consecutive tokens holds a
contiguous range of segments, which is what lets the sparse forms work at the level of
segments instead of token pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TreeLayout:
    """``segment`` and ``segment_end`` per packed token (both [length], int64).

    ``segments`` is how many ids the layout reserves (a tree's nodes + 1, counting nodes
    without tokens), so the next tree packed after it starts past every id it uses.
    """

    segment: torch.Tensor
    segment_end: torch.Tensor
    segments: int

    def __post_init__(self) -> None:
        if self.segment.shape != self.segment_end.shape or self.segment.dim() != 1:
            raise ValueError("segment and segment_end must be 1-D tensors of the same length")

    @property
    def length(self) -> int:
        return int(self.segment.numel())


def subtree_ends(parent: tuple[int, ...] | list[int]) -> list[int]:
    """One past the last node of each node's subtree, for nodes listed in preorder.

    ``parent[i]`` is a node index or negative for a top-level node. Raises ValueError when
    the order is not a preorder, i.e. some subtree is not one contiguous run.
    """
    n = len(parent)
    end = [i + 1 for i in range(n)]
    size = [1] * n
    for i in range(n - 1, -1, -1):
        p = parent[i]
        if p >= 0:
            if not p < i:
                raise ValueError(f"node {i} comes before its parent {p}")
            end[p] = max(end[p], end[i])
            size[p] += size[i]
    for i in range(n):
        # The run from i to its last descendant holds exactly i's subtree.
        if end[i] - i != size[i]:
            raise ValueError(f"the subtree of node {i} is not contiguous: the nodes are not in preorder")
    return end


def tree_segments(node_lengths: list[int], parent: tuple[int, ...] | list[int], prompt_length: int) -> TreeLayout:
    """The layout of one tree: the prompt is segment 0, node i is segment i + 1."""
    node_end = subtree_ends(parent)
    num_nodes = len(node_lengths)
    segment, segment_end = [0] * prompt_length, [num_nodes + 1] * prompt_length
    for node, count in enumerate(node_lengths):
        segment += [node + 1] * count
        segment_end += [node_end[node] + 1] * count
    return TreeLayout(
        torch.tensor(segment, dtype=torch.long), torch.tensor(segment_end, dtype=torch.long), num_nodes + 1
    )


def concatenate(layouts: list[TreeLayout]) -> TreeLayout:
    """Several trees in one sequence; each tree's ids are shifted past the trees before it."""
    segments, ends, offset = [], [], 0
    for layout in layouts:
        segments.append(layout.segment + offset)
        ends.append(layout.segment_end + offset)
        offset += layout.segments
    return TreeLayout(torch.cat(segments), torch.cat(ends), offset)


def allowed(layout: TreeLayout, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The attention rule for every (query, key) pair of two broadcastable index tensors."""
    seg_q, seg_k = layout.segment[query], layout.segment[key]
    return (seg_k <= seg_q) & (seg_q < layout.segment_end[key]) & (key <= query)


def dense_mask(layout: TreeLayout) -> torch.Tensor:
    """The [length, length] boolean mask: the parity reference, quadratic in memory."""
    index = torch.arange(layout.length, device=layout.segment.device)
    return allowed(layout, index[:, None], index[None, :])


def padded(layout: TreeLayout, length: int) -> TreeLayout:
    """``layout`` extended to ``length`` tokens; each pad token is a segment of its own,
    so real tokens never see a pad and every pad sees at least itself."""
    extra = length - layout.length
    if extra < 0:
        raise ValueError(f"cannot pad {layout.length} tokens to {length}")
    pad_segment = torch.arange(layout.segments, layout.segments + extra, device=layout.segment.device)
    return TreeLayout(
        torch.cat([layout.segment, pad_segment]),
        torch.cat([layout.segment_end, pad_segment + 1]),
        layout.segments + extra,
    )


@dataclass(frozen=True)
class SegmentView:
    """The segments present in a layout, renumbered 0..S-1 in order.

    ``token_segment[t]`` is token t's local segment; ``ancestor[i, j]`` says local segment j
    is an ancestor-or-self of local segment i.
    """

    token_segment: torch.Tensor
    ancestor: torch.Tensor

    @staticmethod
    def of(layout: TreeLayout) -> SegmentView:
        ids, token_segment = torch.unique_consecutive(layout.segment, return_inverse=True)
        first = torch.searchsorted(layout.segment, ids)
        ends = layout.segment_end[first]
        ancestor = (ids[None, :] <= ids[:, None]) & (ids[:, None] < ends[None, :])
        return SegmentView(token_segment, ancestor)


@dataclass(frozen=True)
class BlockStructure:
    """Which [block x block] tiles of the mask hold any allowed pair, and which hold only allowed pairs.

    Both are [blocks, blocks] boolean; ``full`` implies ``any_allowed``. A diagonal tile
    is never marked full, since the causal rule cuts through it.
    """

    any_allowed: torch.Tensor
    full: torch.Tensor


def block_structure(layout: TreeLayout, block: int) -> BlockStructure:
    """Tiles of ``block`` tokens; ``layout.length`` must be a multiple of ``block``.

    Counts, per pair of tiles, the (query segment, key segment) pairs where the key's
    segment is an ancestor-or-self: a tile below the diagonal has an allowed pair iff the
    count is positive, and only allowed pairs iff it equals the product of the two tiles'
    segment counts.
    """
    if layout.length % block:
        raise ValueError(f"length {layout.length} is not a multiple of block {block}")
    view = SegmentView.of(layout)
    device = layout.segment.device
    blocks = layout.length // block
    incidence = torch.zeros(blocks, view.ancestor.shape[0], device=device)
    incidence[torch.arange(layout.length, device=device) // block, view.token_segment] = 1.0
    pairs = incidence @ view.ancestor.float() @ incidence.T
    per_block = incidence.sum(1)
    below = torch.ones(blocks, blocks, dtype=torch.bool, device=device).tril(-1)
    diagonal = torch.eye(blocks, dtype=torch.bool, device=device)
    any_allowed = ((pairs > 0) & below) | diagonal
    full = (pairs == per_block[:, None] * per_block[None, :]) & below
    return BlockStructure(any_allowed, full)


@dataclass(frozen=True)
class QueryChunks:
    """Queries in runs of ``chunk`` tokens, each with the keys it may attend to.

    ``keys[c]`` lists (ascending) every token that some query of chunk c may attend to;
    ``mask[c]`` is [queries in chunk, len(keys[c])], the rule restricted to them. Memory
    is the sum over chunks of chunk x keys: length x (ancestor length), not length².
    """

    chunk: int
    starts: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    mask: tuple[torch.Tensor, ...]


def query_chunks(layout: TreeLayout, chunk: int) -> QueryChunks:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    view = SegmentView.of(layout)
    starts, keys, masks = [], [], []
    for start in range(0, layout.length, chunk):
        stop = min(start + chunk, layout.length)
        first, last = int(view.token_segment[start]), int(view.token_segment[stop - 1])
        visible_segment = view.ancestor[first : last + 1].any(0)
        key = torch.nonzero(visible_segment[view.token_segment[:stop]]).squeeze(1)
        query = torch.arange(start, stop, device=layout.segment.device)
        starts.append(start)
        keys.append(key)
        masks.append(allowed(layout, query[:, None], key[None, :]))
    return QueryChunks(chunk, tuple(starts), tuple(keys), tuple(masks))
