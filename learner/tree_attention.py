"""Attention over packed trees, three ways behind one model attention implementation.

The learner's model calls its attention through transformers' attention interface. This
module registers one implementation, ``TREE_ATTENTION``, that looks at the kind of mask
the forward was given:

* a tensor (or None): SDPA, exactly as transformers' ``sdpa`` does; a dense [L, L]
  boolean tree mask here is the parity reference;
* ``FlexTreeMask``: compiled FlexAttention with a block mask derived from the tree rule,
  so fully masked 128 x 128 tiles are skipped and no [L, L] tensor exists. On the CPU it
  has no backward (PyTorch raises NotImplementedError), so there it serves forwards
  without gradients; on GPUs it also trains;
* ``LeanTreeMask``: attention by query chunks over each chunk's gathered ancestor keys,
  with a hand-written backward that recomputes each chunk's probabilities (the
  FlashAttention recipe) instead of storing them. Memory grows with L x (ancestor
  length); saved activations are only q, k, v, the output and the log-sum-exp. The rest
  of a decoder layer's saved activations (its MLP's above all) are what
  ``learner.recompute`` trades for time.

The rule itself lives in ``learner.tree_layout``; everything here derives from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from learner.config import AttentionKind
from learner.tree_layout import QueryChunks, TreeLayout, allowed, block_structure, dense_mask, padded, query_chunks

#: The name the learner's models are loaded with (``attn_implementation``).
TREE_ATTENTION = "tracerl_tree"

#: FlexAttention's tile edge; padded lengths are multiples of it.
FLEX_BLOCK = 128


@dataclass(frozen=True)
class FlexTreeMask:
    """A block mask over the layout padded to ``block_mask``'s length; ``length`` real tokens."""

    block_mask: BlockMask
    length: int


@dataclass(frozen=True)
class LeanTreeMask:
    chunks: QueryChunks


def flex_padded_length(length: int) -> int:
    """``length`` rounded up so that compiled shapes come from a small set.

    The compiled kernel is specialised to its shapes (inductor's dynamic-shape FlexAttention
    fails to build on the CPU), so lengths are rounded up to one of four steps per
    doubling: at most 25% padding, at most four compilations per octave of lengths. Only
    attention sees the padding; the rest of the model runs on the real tokens.
    """
    if length <= FLEX_BLOCK:
        return FLEX_BLOCK
    step = max(FLEX_BLOCK, 1 << (math.ceil(math.log2(length)) - 3))
    return -(-length // step) * step


def flex_tree_mask(layout: TreeLayout) -> FlexTreeMask:
    full_length = flex_padded_length(layout.length)
    extended = padded(layout, full_length)
    tiles = block_structure(extended, FLEX_BLOCK)
    partial = tiles.any_allowed & ~tiles.full

    def mask_mod(batch, head, query, key):
        return allowed(extended, query, key)

    block_mask = BlockMask.from_kv_blocks(
        *_ordered(partial),
        *_ordered(tiles.full),
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=mask_mod,
        seq_lengths=(full_length, full_length),
    )
    return FlexTreeMask(block_mask, layout.length)


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, cols] boolean tiles as (count per row, column indices with the set ones first)."""
    counts = tiles.sum(-1, dtype=torch.int32)
    columns = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[None, None].contiguous(), columns[None, None].contiguous()


def lean_tree_mask(layout: TreeLayout, chunk: int) -> LeanTreeMask:
    return LeanTreeMask(query_chunks(layout, chunk))


def attention_argument(
    layout: TreeLayout, kind: AttentionKind, needs_grad: bool, chunk: int
) -> torch.Tensor | FlexTreeMask | LeanTreeMask:
    """What the model's attention receives for a packed forward of ``layout``.

    ``lean`` trains with the chunked path and uses FlexAttention where no gradient is
    needed (proximal and reference logprobs).
    """
    if kind == "dense":
        return dense_mask(layout)[None, None]
    if kind == "flex" or not needs_grad:
        return flex_tree_mask(layout)
    return lean_tree_mask(layout, chunk)


# ---------------------------------------------------------------------------- FlexAttention

_compiled_flex = None


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        # One compilation per padded length (see flex_padded_length), more than dynamo's default allowance.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_tree_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: FlexTreeMask, scale: float | None
) -> torch.Tensor:
    """[1, heads, L, d] inputs (key/value may have fewer heads) -> [1, heads, L, d]."""
    extra = mask.block_mask.seq_lengths[0] - mask.length
    grow = (0, 0, 0, extra)
    out = _flex()(
        F.pad(query, grow),
        F.pad(key, grow),
        F.pad(value, grow),
        block_mask=mask.block_mask,
        scale=scale,
        enable_gqa=True,
    )
    return out[:, :, : mask.length]


# ---------------------------------------------------------------------------- chunked path


class _LeanTreeAttention(torch.autograd.Function):
    """Exact softmax attention per query chunk over that chunk's keys.

    Shapes: query [kv_heads, group, L, d], key/value [kv_heads, L, d]; the group axis holds
    the query heads that share one key/value head, so GQA needs no repeated keys.

    Every chunk's [heads, chunk, keys] scores are computed into one workspace allocated per
    call and updated in place: per-chunk temporaries at long contexts are tens of MB each,
    and allocating them afresh would cost the kernel zeroing new pages again for every chunk.
    """

    @staticmethod
    def forward(ctx, query, key, value, chunks: QueryChunks, scale: float):
        kv_heads, group, _, dim = query.shape
        out = torch.empty_like(query)
        lse = torch.empty(query.shape[:-1], dtype=query.dtype, device=query.device)
        workspace = _ChunkWorkspace(query, chunks, buffers=2)
        for start, keys, mask in zip(chunks.starts, chunks.keys, chunks.mask, strict=True):
            stop = start + mask.shape[0]
            q_chunk = query[:, :, start:stop].reshape(kv_heads, -1, dim)
            scores = workspace.scores(0, q_chunk, key[:, keys], mask, scale)
            # torch.logsumexp's own steps, then exp(s - lse) as the backward recomputes it, so that
            # forward and backward see the same probabilities to the last bit
            top = scores.amax(-1, keepdim=True)
            shifted = torch.sub(scores, top, out=workspace.buffer(1, scores.shape))
            chunk_lse = shifted.exp_().sum(-1, keepdim=True).log_().add_(top)
            lse[:, :, start:stop] = chunk_lse.view(kv_heads, group, -1)
            probs = scores.sub_(chunk_lse).exp_()
            out[:, :, start:stop] = torch.bmm(probs, value[:, keys]).view(kv_heads, group, -1, dim)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.chunks, ctx.scale = chunks, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        chunks, scale = ctx.chunks, ctx.scale
        grad_query = torch.zeros_like(query)
        grad_key = torch.zeros_like(key)
        grad_value = torch.zeros_like(value)
        kv_heads, group, _, dim = query.shape
        # D_i = sum_j P_ij dP_ij = dO_i . O_i
        delta = (grad_out * out).sum(-1)
        workspace = _ChunkWorkspace(query, chunks, buffers=2)
        for start, keys, mask in zip(chunks.starts, chunks.keys, chunks.mask, strict=True):
            stop = start + mask.shape[0]
            q_chunk = query[:, :, start:stop].reshape(kv_heads, -1, dim)
            k_chunk, v_chunk = key[:, keys], value[:, keys]
            d_out = grad_out[:, :, start:stop].reshape(kv_heads, -1, dim)
            probs = workspace.scores(0, q_chunk, k_chunk, mask, scale)
            probs.sub_(lse[:, :, start:stop].reshape(kv_heads, -1, 1)).exp_()
            grad_value.index_add_(1, keys, torch.bmm(probs.transpose(1, 2), d_out))
            d_probs = workspace.buffer(1, probs.shape)
            torch.bmm(d_out, v_chunk.transpose(1, 2), out=d_probs)
            d_scores = probs.mul_(d_probs.sub_(delta[:, :, start:stop].reshape(kv_heads, -1, 1)))
            grad_query[:, :, start:stop] = (torch.bmm(d_scores, k_chunk) * scale).view(kv_heads, group, -1, dim)
            grad_key.index_add_(1, keys, torch.bmm(d_scores.transpose(1, 2), q_chunk).mul_(scale))
        return grad_query, grad_key, grad_value, None, None


class _ChunkWorkspace:
    """Buffers that hold the largest chunk's [kv_heads, group x chunk, keys] scores, reused by every chunk."""

    def __init__(self, query: torch.Tensor, chunks: QueryChunks, buffers: int) -> None:
        kv_heads, group = query.shape[:2]
        largest = max(mask.numel() for mask in chunks.mask)
        self.flat = [query.new_empty(kv_heads * group * largest) for _ in range(buffers)]
        self.blocked = torch.empty(largest, dtype=torch.bool, device=query.device)
        self.group = group

    def buffer(self, index: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return self.flat[index][: math.prod(shape)].view(shape)

    def scores(
        self, index: int, q_chunk: torch.Tensor, k_chunk: torch.Tensor, mask: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Scaled scores of ``q_chunk`` [kv_heads, group x n, d] against ``k_chunk`` [kv_heads, keys, d],
        -inf where ``mask`` [n, keys] forbids, in buffer ``index``."""
        kv_heads, rows, _ = q_chunk.shape
        scores = self.buffer(index, (kv_heads, rows, k_chunk.shape[1]))
        torch.bmm(q_chunk, k_chunk.transpose(1, 2), out=scores).mul_(scale)
        blocked = torch.logical_not(mask, out=self.blocked[: mask.numel()].view(mask.shape))
        scores.view(kv_heads, self.group, *mask.shape).masked_fill_(blocked, -math.inf)
        return scores


def lean_tree_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LeanTreeMask, scale: float | None
) -> torch.Tensor:
    """[1, heads, L, d] inputs (key/value may have fewer heads) -> [1, heads, L, d]."""
    _, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query[0].reshape(kv_heads, heads // kv_heads, length, dim)
    scale = dim**-0.5 if scale is None else scale
    out = _LeanTreeAttention.apply(grouped, key[0], value[0], mask.chunks, scale)
    return out.reshape(1, heads, length, dim)


# ---------------------------------------------------------------------------- model hook


def tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns [batch, L, heads, d]."""
    if isinstance(attention_mask, (FlexTreeMask, LeanTreeMask)):
        if dropout:
            raise ValueError("tree attention has no dropout; the learner's models run without it")
        if query.shape[0] != 1:
            raise ValueError(f"a packed tree forward is one row, got {query.shape[0]}")
        if isinstance(attention_mask, FlexTreeMask):
            out = flex_tree_attention(query, key, value, attention_mask, scaling)
        else:
            out = lean_tree_attention(query, key, value, attention_mask, scaling)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
# Unpacked rows carry an ordinary padding mask, which transformers turns into SDPA's.
AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)
