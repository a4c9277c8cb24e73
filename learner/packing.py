"""Forward layouts for a tree: packed (shared prefixes computed once) or one row per path.

Packed layout (checked on Qwen3 with SDPA in transformers 5.19): the prompt, then every
node's action+observation tokens in depth-first order, as one sequence. A node's position
ids continue from its parent's last position, so each branch restarts where the branch
point ended. A 4D boolean mask lets a token attend to the tokens of its ancestors and to
the earlier tokens of its own node; since depth-first order puts every ancestor first,
that is "ancestor-or-self segment AND causal".

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

PAD_TOKEN_ID = 0  # padded positions are masked out; any valid id will do


@dataclass(frozen=True)
class ForwardBatch:
    """Model inputs for one tree plus where its trained tokens sit in them.

    ``attention_mask`` is [rows, length] (padding mask) for unpacked rows and
    [1, 1, length, length] (boolean tree mask) when packed. ``path_of_pair`` /
    ``target_of_pair`` list which targets make up each path, for sequence-level losses.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_row: torch.Tensor
    target_predictor: torch.Tensor
    target_token: torch.Tensor
    target_node: torch.Tensor
    target_weight: torch.Tensor
    behaviour_logprobs: torch.Tensor
    path_of_pair: torch.Tensor
    target_of_pair: torch.Tensor
    path_leaf: torch.Tensor
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
    segment = [0] * n_prompt  # segment 0 is the prompt, node i is segment i + 1
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
        segment += [node + 1] * len(body)
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

    ancestor = torch.zeros(tree.num_nodes + 1, tree.num_nodes + 1, dtype=torch.bool)
    ancestor[:, 0] = True
    for node in range(tree.num_nodes):
        ancestor[node + 1, node + 1] = True
        parent = tree.parent[node]
        if parent != NO_NODE:
            ancestor[node + 1] |= ancestor[parent + 1]
    seg = _long(segment)
    length = len(tokens)
    mask = ancestor[seg[:, None], seg[None, :]] & torch.ones(length, length, dtype=torch.bool).tril()

    path_of_pair, target_of_pair = [], []
    for p, path in enumerate(tree.paths):
        for node in path:
            path_of_pair += [p] * len(node_targets[node])
            target_of_pair += node_targets[node]

    return ForwardBatch(
        input_ids=_long(tokens)[None],
        position_ids=_long(positions)[None],
        attention_mask=mask[None, None],
        target_row=torch.zeros(len(t_token), dtype=torch.long),
        target_predictor=_long(t_predictor),
        target_token=_long(t_token),
        target_node=_long(t_node),
        target_weight=torch.tensor(t_weight, dtype=torch.float32),
        behaviour_logprobs=torch.tensor(t_behaviour_logprobs, dtype=torch.float32),
        path_of_pair=_long(path_of_pair),
        target_of_pair=_long(target_of_pair),
        path_leaf=_long([path[-1] for path in tree.paths]),
        input_tokens=length,
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
        attention_mask=_long(attention),
        target_row=_long(t_row),
        target_predictor=_long(t_pred),
        target_token=_long(t_token),
        target_node=_long(t_node),
        target_weight=torch.ones(len(t_token), dtype=torch.float32),
        behaviour_logprobs=torch.tensor(t_behaviour_logprobs, dtype=torch.float32),
        path_of_pair=_long(path_of_pair),
        target_of_pair=torch.arange(len(t_token), dtype=torch.long),
        path_leaf=_long([row.leaf_index for row in rows]),
        input_tokens=sum(len(r.token_ids) for r in rows),
    )


def forward_batch(tree: TrainingTree, packed: bool) -> ForwardBatch:
    return packed_batch(tree) if packed else unpacked_batch(tree)


def target_logprobs(model: torch.nn.Module, batch: ForwardBatch) -> torch.Tensor:
    """Log-probabilities of every target token under ``model``, in float32."""
    logits: torch.Tensor = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    ).logits
    picked = logits[batch.target_row, batch.target_predictor].float()
    return picked.log_softmax(-1).gather(-1, batch.target_token[:, None]).squeeze(-1)


def to_device(batch: ForwardBatch, device: torch.device) -> ForwardBatch:
    fields: dict[str, Any] = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    return ForwardBatch(**fields)
