"""From a CompletedTree to training data, token for token (pure: no I/O, no torch).

Two views of the same validated tree:

* ``TrainingTree``: the nodes that lie on at least one complete root-to-leaf path, in
  depth-first order (every ancestor before its descendants). Advantages are computed on it
  and the packed forward lays it out as one sequence.
* ``PathSequence``: one root-to-leaf path spelled out as prompt + (action + observation)*,
  with per-token masks, behaviour logprobs, versions and owning node. This is what an
  unpacked forward trains on.

A tree that cannot be trained on safely raises ``TreeRejected`` with a reason; the caller
counts and logs it, and nothing from that tree reaches the optimiser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.messages import CompletedTree

NO_NODE = -1  # owner of prompt tokens
NO_VERSION = -1  # version of tokens the policy did not generate


class TreeRejected(ValueError):
    """A tree that must not be trained on. ``reason`` is a short category for counters."""

    def __init__(self, tree_id: str, reason: str, detail: str) -> None:
        self.tree_id = tree_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"tree {tree_id} rejected ({reason}): {detail}")


@dataclass(frozen=True)
class TrainingTree:
    """A validated tree restricted to its complete paths; node lists are in DFS order.

    ``parent[i]`` is the index of node i's parent, or ``NO_NODE`` under the prompt.
    ``reward[i]`` is set exactly on leaves. ``stale[i]`` marks nodes whose tokens are older
    than the staleness bound and so carry no loss.
    """

    tree_id: str
    prompt_token_ids: tuple[int, ...]
    node_ids: tuple[str, ...]
    parent: tuple[int, ...]
    action_token_ids: tuple[tuple[int, ...], ...]
    behaviour_logprobs: tuple[tuple[float, ...], ...]
    observation_token_ids: tuple[tuple[int, ...], ...]
    policy_version: tuple[int, ...]
    reward: tuple[float | None, ...]
    stale: tuple[bool, ...]
    paths: tuple[tuple[int, ...], ...]  # node indices from depth 1 to the leaf, one per leaf
    dropped_incomplete_nodes: int

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)

    def path_multiplicity(self) -> tuple[int, ...]:
        """How many complete paths pass through each node (its leaf count)."""
        counts = [0] * self.num_nodes
        for path in self.paths:
            for node in path:
                counts[node] += 1
        return tuple(counts)

    def path_token_counts(self) -> tuple[int, int, int]:
        """(action tokens, stale action tokens, all tokens) summed over paths, as unpacked."""
        multiplicity = self.path_multiplicity()
        action = stale = total = 0
        for i in range(self.num_nodes):
            n_action = len(self.action_token_ids[i])
            action += multiplicity[i] * n_action
            stale += multiplicity[i] * n_action if self.stale[i] else 0
            total += multiplicity[i] * (n_action + len(self.observation_token_ids[i]))
        total += len(self.paths) * len(self.prompt_token_ids)
        return action, stale, total


@dataclass(frozen=True)
class PathSequence:
    """One root-to-leaf path; every per-token tuple has the length of ``token_ids``.

    ``action_mask`` is 1 on policy-generated tokens; ``loss_mask`` is ``action_mask`` minus
    stale tokens. ``behaviour_logprobs`` is 0.0 and ``policy_version`` is ``NO_VERSION``
    where ``action_mask`` is 0. ``node_index`` is ``NO_NODE`` on prompt tokens.
    """

    tree_id: str
    leaf_index: int
    token_ids: tuple[int, ...]
    action_mask: tuple[int, ...]
    loss_mask: tuple[int, ...]
    behaviour_logprobs: tuple[float, ...]
    policy_version: tuple[int, ...]
    node_index: tuple[int, ...]


def prepare_tree(
    tree: CompletedTree, learner_version: int, staleness_eta: int, vocab_size: int | None = None
) -> TrainingTree:
    """Validate ``tree`` against the learner's state and keep its complete paths."""
    tid = tree.tree_id
    if not tree.prompt_token_ids:
        raise TreeRejected(tid, "empty_prompt", "the prompt has no tokens")
    by_id = {n.node_id: n for n in tree.nodes}
    children: dict[str | None, list[str]] = {}
    for n in tree.nodes:  # arrival order is kept so the layout is deterministic
        children.setdefault(n.parent_id, []).append(n.node_id)

    # Behaviour logprobs were checked when the message was decoded (protocol.messages).
    for n in tree.nodes:
        if n.policy_version > learner_version:
            raise TreeRejected(
                tid,
                "unknown_version",
                f"node {n.node_id} claims policy version {n.policy_version} > learner version {learner_version}",
            )
        expected_depth = 1 if n.parent_id is None else by_id[n.parent_id].depth + 1
        if n.depth != expected_depth:
            raise TreeRejected(tid, "bad_depth", f"node {n.node_id} has depth {n.depth}, expected {expected_depth}")
        if n.reward is not None and not math.isfinite(n.reward):
            raise TreeRejected(tid, "bad_reward", f"node {n.node_id} has reward {n.reward}")
        if n.done and children.get(n.node_id):
            raise TreeRejected(tid, "terminal_with_children", f"terminal node {n.node_id} has children")
        if vocab_size is not None:
            ids = [*n.action_token_ids, *n.observation_token_ids]
            if any(not 0 <= t < vocab_size for t in ids):
                raise TreeRejected(tid, "token_out_of_vocab", f"node {n.node_id} has ids outside [0, {vocab_size})")
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in tree.prompt_token_ids):
        raise TreeRejected(tid, "token_out_of_vocab", f"prompt has ids outside [0, {vocab_size})")

    # Depth-first walk; a node is kept when its subtree holds a rewarded leaf, because a
    # branch still missing its continuation (partial trees) has no outcome to learn from.
    order: list[str] = []
    keep: dict[str, bool] = {}

    def visit(node_id: str) -> bool:
        kids = children.get(node_id, [])
        position = len(order)
        order.append(node_id)
        if kids:
            kept = [visit(k) for k in kids]
            keep[node_id] = any(kept)
        else:
            keep[node_id] = by_id[node_id].reward is not None
        if not keep[node_id]:
            del order[position:]
        return keep[node_id]

    for top in children.get(None, []):
        visit(top)
    if not order:
        raise TreeRejected(tid, "no_complete_path", "no leaf carries a reward")

    index = {node_id: i for i, node_id in enumerate(order)}
    nodes = [by_id[node_id] for node_id in order]
    parent = tuple(NO_NODE if n.parent_id is None else index[n.parent_id] for n in nodes)
    has_child = {p for p in parent if p != NO_NODE}
    paths = []
    for i in range(len(nodes)):
        if i in has_child:
            continue
        path = [i]
        while parent[path[-1]] != NO_NODE:
            path.append(parent[path[-1]])
        paths.append(tuple(reversed(path)))

    return TrainingTree(
        tree_id=tid,
        prompt_token_ids=tuple(tree.prompt_token_ids),
        node_ids=tuple(order),
        parent=parent,
        action_token_ids=tuple(tuple(n.action_token_ids) for n in nodes),
        behaviour_logprobs=tuple(tuple(n.behaviour_logprobs) for n in nodes),
        observation_token_ids=tuple(tuple(n.observation_token_ids) for n in nodes),
        policy_version=tuple(n.policy_version for n in nodes),
        reward=tuple(n.reward if i not in has_child else None for i, n in enumerate(nodes)),
        stale=tuple(learner_version - n.policy_version > staleness_eta for n in nodes),
        paths=tuple(paths),
        dropped_incomplete_nodes=len(tree.nodes) - len(nodes),
    )


def path_sequences(tree: TrainingTree) -> list[PathSequence]:
    """Spell out every complete path as prompt + (action + observation)*."""
    out = []
    n_prompt = len(tree.prompt_token_ids)
    for path in tree.paths:
        tokens = list(tree.prompt_token_ids)
        action = [0] * n_prompt
        loss = [0] * n_prompt
        logprobs = [0.0] * n_prompt
        versions = [NO_VERSION] * n_prompt
        owner = [NO_NODE] * n_prompt
        for node in path:
            acts, obs = tree.action_token_ids[node], tree.observation_token_ids[node]
            trained = 0 if tree.stale[node] else 1
            tokens += [*acts, *obs]
            action += [1] * len(acts) + [0] * len(obs)
            loss += [trained] * len(acts) + [0] * len(obs)
            logprobs += [*tree.behaviour_logprobs[node], *([0.0] * len(obs))]
            versions += [tree.policy_version[node]] * len(acts) + [NO_VERSION] * len(obs)
            owner += [node] * (len(acts) + len(obs))
        out.append(
            PathSequence(
                tree_id=tree.tree_id,
                leaf_index=path[-1],
                token_ids=tuple(tokens),
                action_mask=tuple(action),
                loss_mask=tuple(loss),
                behaviour_logprobs=tuple(logprobs),
                policy_version=tuple(versions),
                node_index=tuple(owner),
            )
        )
    return out
