from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from allocator.core import ActorLoad, AllocatorCore
from allocator.simulator import SimulatedActor, _unpack_state
from protocol import CompletedTree, TaskSpec, TurnNode


def make_node(
    node_id: str,
    parent_id: str | None,
    *,
    tree_id: str = "s0-0",
    work_id: str = "s0-0.w1",
    depth: int | None = None,
    done: bool = False,
    reward: float | None = None,
    version: int = 0,
    actor_id: str = "a0",
    action_text: str = "search",
    observation_text: str = "result",
    logprobs: tuple[float, ...] = (-0.5, -1.0),
) -> TurnNode:
    if depth is None:
        depth = 1 if parent_id is None else node_id.count(".") + 1
    return TurnNode(
        run_id="test",
        tree_id=tree_id,
        node_id=node_id,
        parent_id=parent_id,
        work_id=work_id,
        actor_id=actor_id,
        task=TaskSpec("sim", "task-0", {"question": "who"}),
        depth=depth,
        policy_version=version,
        prompt_token_ids=[1, 2] if parent_id is None else [],
        action_token_ids=[7] * len(logprobs),
        behaviour_logprobs=list(logprobs),
        observation_token_ids=[8, 9],
        action_text=action_text,
        observation_text=observation_text,
        env_snapshot=node_id.encode(),
        env_score=0.5,
        done=done,
        reward=reward if done else None,
        created_at=0.0,
    )


def true_value(node: TurnNode) -> float:
    """The simulator's ground truth p at ``node``, carried in its env snapshot."""
    return _unpack_state(node.env_snapshot)


def drive(
    core: AllocatorCore,
    actor: SimulatedActor,
    *,
    steps: int,
    rng: np.random.Generator,
    actor_ids: Sequence[str] = ("a0", "a1"),
    capacity: int = 256,
    shuffle: bool = True,
    max_iterations: int = 100_000,
) -> list[CompletedTree]:
    """Run the core against the simulated actor until ``steps`` steps have closed.

    Nodes of one scheduling round arrive shuffled (out of order, children before parents),
    and the simulated learner publishes a new version after every closed step.
    """
    loads = [ActorLoad(a, 0, capacity) for a in actor_ids]
    trees: list[CompletedTree] = []
    now = 0.0
    for _ in range(max_iterations):
        if core.counters["steps_closed"] + core.counters["steps_closed_forced"] >= steps:
            return trees
        nodes: list[TurnNode] = []
        for routed in core.schedule(now, loads):
            actor_id = routed.target or actor_ids[int(rng.integers(len(actor_ids)))]
            nodes.extend(
                actor.rollout(routed.item, actor_id=actor_id, policy_version=core.policy_version, rng=rng, now=now)
            )
        order = rng.permutation(len(nodes)) if shuffle else range(len(nodes))
        for i in order:
            core.on_node(nodes[i], now)
        done = core.pop_completed(now)
        if done:
            trees.extend(done)
            core.on_policy_version(core.policy_version + 1)
        now += 1.0
    raise RuntimeError(f"simulation did not close {steps} steps in {max_iterations} iterations")
