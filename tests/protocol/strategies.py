"""Hypothesis strategies that build every valid protocol message, plus fixed examples.

``sample_messages()`` gives one realistic, deterministic instance of each message type;
bus tests use it for round trips through a real nats-server.
"""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import (
    BroadcastGroup,
    BroadcastJoin,
    CompletedTree,
    Heartbeat,
    SamplingSpec,
    TaskSpec,
    TreeNodeRecord,
    TurnNode,
    WeightsAnnouncement,
    WorkItem,
)

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Logprobs come from the engine as float32, which is what TurnNode carries on the wire. Bounded
# so that a node's (at most 40) sum to a finite float32, as check_behaviour_logprobs requires.
LOGPROB = st.floats(min_value=-(2.0**119), max_value=0.0, width=32)
IDS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=16)
TEXT = st.text(max_size=40)
TOKENS = st.lists(INT32, max_size=40)

PLAIN = st.recursive(
    st.none() | st.booleans() | INT64 | FINITE | TEXT | st.binary(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)

task_specs = st.builds(TaskSpec, env=IDS, task_id=IDS, params=st.dictionaries(TEXT, PLAIN, max_size=4))
sampling_specs = st.builds(
    SamplingSpec,
    temperature=st.floats(min_value=0.0, max_value=5.0),
    top_p=st.floats(min_value=1e-6, max_value=1.0),
    max_tokens_per_turn=st.integers(1, 4096),
    seed=st.none() | INT64,
)


@st.composite
def action_tokens(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    ids = draw(TOKENS)
    return ids, draw(st.lists(LOGPROB, min_size=len(ids), max_size=len(ids)))


@st.composite
def turn_nodes(draw: st.DrawFn) -> TurnNode:
    depth = draw(st.integers(1, 8))
    done = draw(st.booleans())
    ids, logprobs = draw(action_tokens())
    return TurnNode(
        run_id=draw(IDS),
        tree_id=draw(IDS),
        node_id=draw(IDS),
        parent_id=None if depth == 1 else draw(IDS),
        work_id=draw(IDS),
        actor_id=draw(IDS),
        task=draw(task_specs),
        depth=depth,
        policy_version=draw(st.integers(0, 2**31)),
        prompt_token_ids=draw(TOKENS),
        action_token_ids=ids,
        behaviour_logprobs=logprobs,
        observation_token_ids=draw(TOKENS),
        action_text=draw(TEXT),
        observation_text=draw(TEXT),
        env_snapshot=draw(st.binary(max_size=64)),
        env_score=draw(FINITE),
        done=done,
        reward=draw(FINITE) if done else draw(st.none() | FINITE),
        created_at=draw(FINITE),
    )


@st.composite
def work_items(draw: st.DrawFn) -> WorkItem:
    kind = draw(st.sampled_from(["root", "branch"]))
    branch = kind == "branch"
    return WorkItem(
        run_id=draw(IDS),
        work_id=draw(IDS),
        tree_id=draw(IDS),
        kind=kind,
        task=draw(task_specs),
        num_samples=draw(st.integers(1, 64)),
        parent_id=draw(IDS) if branch else None,
        prefix_depth=draw(st.integers(1, 8)) if branch else 0,
        prefix_token_ids=draw(st.lists(INT32, min_size=1, max_size=40)) if branch else draw(TOKENS),
        env_snapshot=draw(st.binary(max_size=64)),
        sampling=draw(sampling_specs),
        max_turns=draw(st.integers(1, 16)),
        min_policy_version=draw(st.integers(0, 1000)),
        issued_at=draw(FINITE),
        shard=draw(st.integers(0, 15)),
    )


@st.composite
def completed_trees(draw: st.DrawFn) -> CompletedTree:
    shard_count = draw(st.integers(1, 8))
    shard = draw(st.integers(0, shard_count - 1))
    count = draw(st.integers(0, 6))
    nodes = []
    for index in range(count):
        parent = draw(st.none() | st.integers(0, index - 1)) if index else None
        done = draw(st.booleans())
        ids, logprobs = draw(action_tokens())
        nodes.append(
            TreeNodeRecord(
                node_id=f"n{index}",
                parent_id=None if parent is None else f"n{parent}",
                depth=1 if parent is None else nodes[parent].depth + 1,
                policy_version=draw(st.integers(0, 1000)),
                action_token_ids=ids,
                behaviour_logprobs=logprobs,
                observation_token_ids=draw(TOKENS),
                done=done,
                reward=draw(FINITE) if done else None,
            )
        )
    return CompletedTree(
        run_id=draw(IDS),
        tree_id=draw(IDS),
        task=draw(task_specs),
        strategy=draw(IDS),
        allocator_step=draw(st.integers(0, 10**6)),
        prompt_token_ids=draw(TOKENS),
        nodes=nodes,
        status=draw(st.sampled_from(["complete", "partial"])),
        budget_turns=draw(st.integers(0, 1000)),
        step_tree_count=draw(st.integers(1, 64)),
        created_at=draw(FINITE),
        shard=shard,
        shard_count=shard_count,
    )


weights_announcements = st.builds(
    WeightsAnnouncement,
    run_id=IDS,
    policy_version=st.integers(0, 10**6),
    object_name=IDS,
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    num_bytes=st.integers(0, 2**40),
    format=st.just("safetensors"),
    created_at=FINITE,
)
heartbeats = st.builds(
    Heartbeat,
    run_id=IDS,
    actor_id=IDS,
    policy_version=st.integers(0, 10**6),
    inflight=st.integers(0, 512),
    capacity=st.integers(0, 512),
    tokens_generated=st.integers(0, 2**40),
    turns_generated=st.integers(0, 2**40),
    started_at=FINITE,
    sent_at=FINITE,
)

any_message = st.one_of(turn_nodes(), work_items(), completed_trees(), weights_announcements, heartbeats)


def realistic_turn_node(run_id: str, index: int, *, action_tokens: int = 300, observation_tokens: int = 50) -> TurnNode:
    """A node of production size: 300 generated tokens with logprobs, ~50 observation tokens."""
    return TurnNode(
        run_id=run_id,
        tree_id=f"tree-{index // 8}",
        node_id=f"node-{index}",
        parent_id=None if index % 4 == 0 else f"node-{index - 1}",
        work_id=f"work-{index // 4}",
        actor_id="actor-0",
        task=TaskSpec(env="search_qa", task_id=f"q{index % 97}", params={"hops": 2}),
        depth=index % 4 + 1,
        policy_version=7,
        prompt_token_ids=list(range(120)) if index % 4 == 0 else [],
        action_token_ids=[(index * 31 + k) % 32000 for k in range(action_tokens)],
        behaviour_logprobs=[-((index + k) % 997) / 1024 for k in range(action_tokens)],  # float32-exact, as from vLLM
        observation_token_ids=[(index * 17 + k) % 32000 for k in range(observation_tokens)],
        action_text="<search> who directed the film </search>",
        observation_text="Doc 1: ... Doc 2: ...",
        env_snapshot=b"\x00" * 64,
        env_score=0.0,
        done=index % 4 == 3,
        reward=1.0 if index % 4 == 3 else None,
        created_at=1_800_000_000.0 + index,
    )


def sample_messages(run_id: str) -> list:
    """One instance of every message type, valid and deterministic."""
    task = TaskSpec(env="search_qa", task_id="q1", params={"hops": 2, "seed": 5})
    return [
        realistic_turn_node(run_id, 1),
        WorkItem(
            shard=0,
            run_id=run_id,
            work_id="w1",
            tree_id="t1",
            kind="branch",
            task=task,
            num_samples=4,
            parent_id="node-1",
            prefix_depth=2,
            prefix_token_ids=[1, 2, 3],
            env_snapshot=b"state",
            sampling=SamplingSpec(seed=3),
            max_turns=4,
            min_policy_version=2,
            issued_at=1.5,
        ),
        CompletedTree(
            shard=0,
            shard_count=1,
            run_id=run_id,
            tree_id="t1",
            task=task,
            strategy="trace",
            allocator_step=3,
            prompt_token_ids=[5, 6],
            nodes=[
                TreeNodeRecord(
                    node_id="a",
                    parent_id=None,
                    depth=1,
                    policy_version=2,
                    action_token_ids=[1, 2],
                    behaviour_logprobs=[-0.5, -0.25],
                    observation_token_ids=[9],
                    done=False,
                    reward=None,
                ),
                TreeNodeRecord(
                    node_id="b",
                    parent_id="a",
                    depth=2,
                    policy_version=2,
                    action_token_ids=[3],
                    behaviour_logprobs=[-1.0],
                    observation_token_ids=[],
                    done=True,
                    reward=1.0,
                ),
            ],
            status="complete",
            budget_turns=2,
            step_tree_count=1,
            created_at=2.0,
        ),
        WeightsAnnouncement(
            run_id=run_id,
            policy_version=3,
            object_name="policy-3",
            sha256="ab" * 32,
            num_bytes=1024,
            format="safetensors",
            created_at=3.0,
        ),
        Heartbeat(
            run_id=run_id,
            actor_id="a1",
            policy_version=3,
            inflight=2,
            capacity=8,
            tokens_generated=100,
            turns_generated=5,
            started_at=0.0,
            sent_at=4.0,
        ),
        BroadcastJoin(run_id=run_id, actor_id="a1", sent_at=5.0),
        BroadcastGroup(
            run_id=run_id,
            group_id="g1",
            epoch=2,
            host="10.0.0.1",
            port=29500,
            backend="nccl",
            members=["a1", "a2"],
            bucket_bytes=128 * 1024 * 1024,
            created_at=6.0,
        ),
    ]
