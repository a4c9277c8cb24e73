from protocol import TaskSpec, TurnNode


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
        action_logprobs=list(logprobs),
        observation_token_ids=[8, 9],
        action_text=action_text,
        observation_text=observation_text,
        env_snapshot=node_id.encode(),
        env_score=0.5,
        done=done,
        reward=reward if done else None,
        created_at=0.0,
    )
