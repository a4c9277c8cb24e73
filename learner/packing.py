"""Forward layouts for a tree: packed (shared prefixes computed once) or one row per path.

Packed layout (checked on Qwen3 with SDPA in transformers 5.19): the prompt, then every
node's action+observation tokens in depth-first order, as one sequence. A node's position
ids continue from its parent's last position, so each branch restarts where the branch
point ended. A token attends to the tokens of its ancestors and to the earlier tokens of
its own node; since depth-first order puts every ancestor first, that is "ancestor-or-self
segment AND causal" (``learner.tree_layout``; how attention computes it is the
``model.attention`` choice, ``learner.tree_attention``). Several packed trees can share one
forward (``merge_packed``): positions restart per tree and no tree sees another.

Both layouts name their trained tokens the same way: a *target* is an action token whose
logprob is needed, read from the logits at its *predictor* position (the previous token
on its path; for a node's first token, the last token of its parent's path). Its weight
is the number of paths that contain it, so the weighted packed loss equals the unpacked
loss in which each path carries its own copy of a shared prefix. Stale tokens are not
targets.

Building a layout is pure; ``target_logprobs`` is the only function that runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learner.sequences import NO_NODE, TrainingTree, path_sequences
from learner.tree_attention import TREE_ATTENTION, AttentionKind, attention_argument
from learner.tree_layout import TreeLayout, concatenate, tree_segments

PAD_TOKEN_ID = 0  # padded positions are masked out; any valid id will do


@dataclass(frozen=True)
class ForwardBatch:
    """Model inputs for one tree (or several packed trees) plus where the trained tokens sit.

    Unpacked rows carry ``padding_mask`` ([rows, length]); a packed forward is one row with
    a ``layout`` instead. ``path_of_pair`` / ``target_of_pair`` list which targets make up
    each path, for sequence-level losses; ``tree_paths`` counts the paths of each tree in
    the forward, in order.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    padding_mask: torch.Tensor | None
    layout: TreeLayout | None
    target_row: torch.Tensor
    target_predictor: torch.Tensor
    target_token: torch.Tensor
    target_node: torch.Tensor
    target_weight: torch.Tensor
    behaviour_logprobs: torch.Tensor
    path_of_pair: torch.Tensor
    target_of_pair: torch.Tensor
    path_leaf: torch.Tensor
    tree_paths: tuple[int, ...]
    input_tokens: int  # tokens the forward computes, padding excluded

    @property
    def num_targets(self) -> int:
        return int(self.target_token.numel())


def _long(values: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def packed_batch(tree: TrainingTree) -> ForwardBatch:
    multiplicity = tree.path_multiplicity()
    n_prompt = len(tree.prompt_token_ids)
    tokens = list(tree.prompt_token_ids)
    positions = list(range(n_prompt))
    body_lengths: list[int] = []
    last_index: list[int] = []  # last packed index on the path ending with node i
    last_position: list[int] = []
    # Per trained token: the packed index predicting it, the token, its node, its weight, its behaviour logprob.
    t_predictor: list[int] = []
    t_token: list[int] = []
    t_node: list[int] = []
    t_weight: list[float] = []
    t_behaviour_logprobs: list[float] = []
    node_targets: list[list[int]] = []

    for node in range(tree.num_nodes):
        parent = tree.parent[node]
        prev_index = n_prompt - 1 if parent == NO_NODE else last_index[parent]
        prev_position = n_prompt - 1 if parent == NO_NODE else last_position[parent]
        start = len(tokens)
        body = [*tree.action_token_ids[node], *tree.observation_token_ids[node]]
        tokens += body
        positions += range(prev_position + 1, prev_position + 1 + len(body))
        body_lengths.append(len(body))
        last_index.append(start + len(body) - 1 if body else prev_index)
        last_position.append(prev_position + len(body))
        mine = []
        if not tree.stale[node]:
            for k, token in enumerate(tree.action_token_ids[node]):
                mine.append(len(t_token))
                t_predictor.append(start + k - 1 if k else prev_index)
                t_token.append(token)
                t_node.append(node)
                t_weight.append(float(multiplicity[node]))
                t_behaviour_logprobs.append(tree.behaviour_logprobs[node][k])
        node_targets.append(mine)

    path_of_pair, target_of_pair = [], []
    for p, path in enumerate(tree.paths):
        for node in path:
            path_of_pair += [p] * len(node_targets[node])
            target_of_pair += node_targets[node]

    return ForwardBatch(
        input_ids=_long(tokens)[None],
        position_ids=_long(positions)[None],
        padding_mask=None,
        layout=tree_segments(body_lengths, tree.parent, n_prompt),
        target_row=torch.zeros(len(t_token), dtype=torch.long),
        target_predictor=_long(t_predictor),
        target_token=_long(t_token),
        target_node=_long(t_node),
        target_weight=torch.tensor(t_weight, dtype=torch.float32),
        behaviour_logprobs=torch.tensor(t_behaviour_logprobs, dtype=torch.float32),
        path_of_pair=_long(path_of_pair),
        target_of_pair=_long(target_of_pair),
        path_leaf=_long([path[-1] for path in tree.paths]),
        tree_paths=(len(tree.paths),),
        input_tokens=len(tokens),
    )


def unpacked_batch(tree: TrainingTree) -> ForwardBatch:
    rows = path_sequences(tree)
    width = max(len(r.token_ids) for r in rows)
    input_ids, positions, attention = [], [], []
    t_row, t_pred, t_token, t_node, t_behaviour_logprobs = [], [], [], [], []
    path_of_pair = []
    for r, row in enumerate(rows):
        n = len(row.token_ids)
        input_ids.append([*row.token_ids, *([PAD_TOKEN_ID] * (width - n))])
        positions.append(list(range(width)))
        attention.append([1] * n + [0] * (width - n))
        for t in range(n):
            if row.loss_mask[t]:
                path_of_pair.append(r)
                t_row.append(r)
                t_pred.append(t - 1)
                t_token.append(row.token_ids[t])
                t_node.append(row.node_index[t])
                t_behaviour_logprobs.append(row.behaviour_logprobs[t])
    return ForwardBatch(
        input_ids=_long(input_ids),
        position_ids=_long(positions),
        padding_mask=_long(attention),
        layout=None,
        target_row=_long(t_row),
        target_predictor=_long(t_pred),
        target_token=_long(t_token),
        target_node=_long(t_node),
        target_weight=torch.ones(len(t_token), dtype=torch.float32),
        behaviour_logprobs=torch.tensor(t_behaviour_logprobs, dtype=torch.float32),
        path_of_pair=_long(path_of_pair),
        target_of_pair=torch.arange(len(t_token), dtype=torch.long),
        path_leaf=_long([row.leaf_index for row in rows]),
        tree_paths=(len(rows),),
        input_tokens=sum(len(r.token_ids) for r in rows),
    )


def forward_batch(tree: TrainingTree, packed: bool) -> ForwardBatch:
    return packed_batch(tree) if packed else unpacked_batch(tree)


def merge_packed(batches: list[ForwardBatch]) -> ForwardBatch:
    """Packed trees one after another in a single forward; targets and paths keep their order."""
    if not batches or any(b.layout is None for b in batches):
        raise ValueError("merge_packed takes one or more packed batches")
    if len(batches) == 1:
        return batches[0]
    token_offset = target_offset = path_offset = 0
    predictors, path_of_pair, target_of_pair = [], [], []
    for b in batches:
        predictors.append(b.target_predictor + token_offset)
        path_of_pair.append(b.path_of_pair + path_offset)
        target_of_pair.append(b.target_of_pair + target_offset)
        token_offset += b.input_ids.shape[1]
        target_offset += b.num_targets
        path_offset += len(b.path_leaf)

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(b, name) for b in batches], dim=-1)

    return ForwardBatch(
        input_ids=cat("input_ids"),
        position_ids=cat("position_ids"),
        padding_mask=None,
        layout=concatenate([b.layout for b in batches if b.layout is not None]),
        target_row=cat("target_row"),
        target_predictor=torch.cat(predictors),
        target_token=cat("target_token"),
        target_node=cat("target_node"),
        target_weight=cat("target_weight"),
        behaviour_logprobs=cat("behaviour_logprobs"),
        path_of_pair=torch.cat(path_of_pair),
        target_of_pair=torch.cat(target_of_pair),
        path_leaf=cat("path_leaf"),
        tree_paths=tuple(n for b in batches for n in b.tree_paths),
        input_tokens=sum(b.input_tokens for b in batches),
    )


def forward_groups(tokens: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive items grouped so that each group's tokens stay within ``max_tokens``.

    An item larger than the budget gets a forward of its own; ``max_tokens`` 0 means one
    item per group. Order is kept, so the grouping is deterministic.
    """
    groups: list[list[int]] = []
    used = 0
    for index, count in enumerate(tokens):
        if groups and max_tokens and used + count <= max_tokens:
            groups[-1].append(index)
            used += count
        else:
            groups.append([index])
            used = count
    return groups


def model_inputs(
    model: torch.nn.Module, batch: ForwardBatch, attention: AttentionKind = "dense", lean_chunk: int = 256
) -> dict[str, Any]:
    """Keyword arguments for ``model`` that compute ``batch`` with the chosen attention.

    A packed forward hands every layer a ready-made mask (transformers skips building its
    own when given a per-layer-type dict); ``flex`` and ``lean`` need a model loaded with
    ``attn_implementation=TREE_ATTENTION``, ``dense`` also runs under plain ``sdpa``.
    """
    inputs: dict[str, Any] = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if batch.layout is None:
        return {**inputs, "attention_mask": batch.padding_mask}
    config: Any = getattr(model, "module", model).config  # DDP and FSDP wrap the model as .module
    if attention != "dense" and config._attn_implementation != TREE_ATTENTION:
        raise ValueError(f"attention {attention!r} needs a model loaded with attn_implementation={TREE_ATTENTION!r}")
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ["full_attention"]):
        raise ValueError("tree attention covers full-attention layers only, not sliding windows")
    needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())
    mask = attention_argument(batch.layout, attention, needs_grad, lean_chunk)
    return {**inputs, "attention_mask": {"full_attention": mask}}


def target_logprobs(
    model: torch.nn.Module, batch: ForwardBatch, attention: AttentionKind = "dense", lean_chunk: int = 256
) -> torch.Tensor:
    """Log-probabilities of every target token under ``model``, in float32.

    Logits are computed only at predictor positions: at long contexts and real vocabulary
    sizes the full [L, vocab] logits would dwarf everything else.
    """
    keep = torch.unique(batch.target_predictor)
    logits: torch.Tensor = model(**model_inputs(model, batch, attention, lean_chunk), logits_to_keep=keep).logits
    picked = logits[batch.target_row, torch.searchsorted(keep, batch.target_predictor)].float()
    return picked.log_softmax(-1).gather(-1, batch.target_token[:, None]).squeeze(-1)


def to_device(batch: ForwardBatch, device: torch.device) -> ForwardBatch:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, TreeLayout):
            return TreeLayout(value.segment.to(device), value.segment_end.to(device), value.segments)
        return value

    return ForwardBatch(**{k: move(v) for k, v in vars(batch).items()})
