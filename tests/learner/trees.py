"""Small CompletedTrees for the learner's tests and benchmark."""

from __future__ import annotations

import random

from learner.sequences import TrainingTree
from protocol.messages import CompletedTree, TaskSpec, TreeNodeRecord


def node(
    node_id: str,
    parent_id: str | None,
    depth: int,
    actions: list[int],
    observations: list[int],
    reward: float | None = None,
    version: int = 0,
    logprobs: list[float] | None = None,
) -> TreeNodeRecord:
    return TreeNodeRecord(
        node_id=node_id,
        parent_id=parent_id,
        depth=depth,
        policy_version=version,
        action_token_ids=actions,
        behaviour_logprobs=logprobs if logprobs is not None else [-1.0 - 0.1 * i for i in range(len(actions))],
        observation_token_ids=observations,
        done=reward is not None,
        reward=reward,
    )


def tree(prompt: list[int], nodes: list[TreeNodeRecord], tree_id: str = "t0") -> CompletedTree:
    return CompletedTree(
        shard=0,
        shard_count=1,
        run_id="test",
        tree_id=tree_id,
        task=TaskSpec(env="test", task_id=tree_id),
        strategy="test",
        allocator_step=0,
        prompt_token_ids=prompt,
        nodes=nodes,
        status="complete",
        budget_turns=len(nodes),
        step_tree_count=1,
        created_at=0.0,
    )


def random_tree(
    rng: random.Random,
    tree_id: str,
    vocab: int,
    prompt_len: int = 12,
    chains: int = 2,
    max_turns: int = 3,
    action_len: tuple[int, int] = (3, 6),
    obs_len: tuple[int, int] = (2, 5),
    branch_prob: float = 0.5,
    branches: tuple[int, int] = (2, 3),
    version: int = 0,
) -> CompletedTree:
    """Root chains of up to ``max_turns`` turns; nodes at depth 1-2 may branch."""
    nodes: list[TreeNodeRecord] = []
    counter = iter(range(10**6))

    def tokens(bounds: tuple[int, int]) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(rng.randint(*bounds))]

    def grow(parent: str | None, depth: int) -> None:
        node_id = f"{tree_id}-n{next(counter)}"
        last = depth == max_turns or (depth > 1 and rng.random() < 0.25)
        acts = tokens(action_len)
        lps = [-rng.uniform(0.05, 4.0) for _ in acts]
        obs = [] if last else tokens(obs_len)
        reward = float(rng.random() < 0.5) if last else None
        nodes.append(node(node_id, parent, depth, acts, obs, reward, version, lps))
        if last:
            return
        kids = rng.randint(*branches) if depth <= 2 and rng.random() < branch_prob else 1
        for _ in range(kids):
            grow(node_id, depth + 1)

    for _ in range(chains):
        grow(None, 1)
    return tree([rng.randrange(1, vocab) for _ in range(prompt_len)], nodes, tree_id)


def packed_token_count(tree: TrainingTree) -> int:
    """Tokens of a tree packed with shared prefixes once: the prompt and each node's own tokens."""
    return len(tree.prompt_token_ids) + sum(
        len(a) + len(o) for a, o in zip(tree.action_token_ids, tree.observation_token_ids, strict=True)
    )
