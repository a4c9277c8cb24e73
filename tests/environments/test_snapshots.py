"""Snapshot/restore equivalence and robustness to arbitrary action text, for every env."""

import json
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from environments import EnvironmentError_, make_env, make_tasks

GENERATED = ["multihop", "frozenlake", "sokoban", "math", "toolcall", "webshop"]
GARBAGE = [
    "",
    "<search>",
    "</answer>",
    "<answer> </answer>",
    "<search> <answer> x </answer>",
    "<think> " * 50,
    "\x00\n\t ünïcode ☃ " * 3,
    "<information> fake </information>",
    "x" * 5000,
]


def random_action(env, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return env.expert_action()
    if roll < 0.6:
        return rng.choice(GARBAGE)
    if env.name == "multihop":
        kb = env.question.kb
        who = rng.choice(kb.people)
        if roll < 0.85:
            return f"<search> {rng.choice(kb.config.relations)} of {who} </search>"
        return f"<answer> {who} </answer>"
    if env.name == "math":
        if roll < 0.85:
            return f"<calculate> {rng.randint(0, 40)} {rng.choice('+-*/')} {rng.randint(0, 9)} </calculate>"
        return f"<answer> {rng.randint(0, 40)} </answer>"
    if env.name == "toolcall":
        if roll < 0.85:
            order = f"o{rng.randint(1, 9)}"
            call = rng.choice(
                [
                    {"name": "get_order", "arguments": {"order_id": order}},
                    {"name": "cancel_order", "arguments": {"order_id": order, "reason": "no longer needed"}},
                    {"name": "return_order", "arguments": {"order_id": order}},
                    {"name": "change_quantity", "arguments": {"order_id": order, "quantity": rng.randint(0, 4)}},
                    {
                        "name": "place_order",
                        "arguments": {"user_id": f"u{rng.randint(1, 3)}", "product": "mug", "quantity": 1},
                    },
                ]
            )
            return f"<tool_call> {json.dumps(call)} </tool_call>"
        return "<answer> done </answer>"
    if env.name == "webshop":
        return (
            "<answer> "
            + rng.choice(["search[ mug ]", "back", "buy", "click[ p001 ]", "click[ navy ]", "click[ large ]"])
            + " </answer>"
        )
    return f"<answer> {rng.choice(['Up', 'Down', 'Left', 'Right', 'u', 'D'])} </answer>"


@pytest.mark.parametrize("name", GENERATED)
def test_restore_into_fresh_instance_continues_identically(name):
    rng = random.Random(f"snapshots:{name}")
    tasks = make_tasks(name, "train", 30, seed=2)
    for episode in range(120):
        task = rng.choice(tasks)
        env = make_env(name)
        env.reset(task)
        actions = [random_action(env, rng) for _ in range(10)]
        cut = rng.randrange(0, 4)
        for action in actions[:cut]:
            env.step(action)
        wire = msgpack.packb(env.snapshot())
        clone = make_env(name)
        clone.restore(msgpack.unpackb(wire))
        assert clone.snapshot() == env.snapshot()
        assert clone.score() == env.score()
        assert clone.expert_action() == env.expert_action()
        for action in actions[cut:]:
            original, copied = env.step(action), clone.step(action)
            assert original == copied, (episode, action)
            assert env.score() == clone.score()


@pytest.mark.parametrize("name", GENERATED)
@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=300) | st.sampled_from(GARBAGE), min_size=1, max_size=4))
def test_arbitrary_text_never_raises_and_leaves_a_valid_state(name, texts):
    task = make_tasks(name, "train", 1, seed=9)[0]
    env = make_env(name)
    env.reset(task)
    turns = 0
    for text in texts:
        result = env.step(text)
        turns += 1
        assert isinstance(result.observation, str)
        assert 0.0 <= result.reward <= 1.0 if env.graded_reward else result.reward in (0.0, 1.0)
        assert 0.0 <= env.score() <= 1.0
        if result.done:
            break
    clone = make_env(name)
    clone.restore(msgpack.unpackb(msgpack.packb(env.snapshot())))
    assert clone.snapshot() == env.snapshot()
    assert clone.snapshot()["turn"] == turns


def test_a_restored_step_is_the_same_step_every_time():
    # What `python -m bench.env_step` times (restore, step, snapshot) must also be repeatable.
    for name in GENERATED:
        env = make_env(name)
        task = make_tasks(name, "train", 1, seed=0)[0]
        env.reset(task)
        state = env.snapshot()
        action = env.expert_action()
        first = env.step(action)
        after = env.snapshot()
        for _ in range(20):
            env.restore(state)
            again = env.step(action)
            assert (again.observation, again.reward, again.done) == (first.observation, first.reward, first.done)
            assert env.snapshot() == after


def _snapshot(name):
    env = make_env(name)
    env.reset(make_tasks(name, "train", 1, seed=0)[0])
    env.step(env.expert_action())
    return env.snapshot()


CORRUPTIONS = [
    ("not a mapping", lambda s: [1, 2, 3], "must be a mapping"),
    ("other env", lambda s: {**s, "env": "chess"}, "snapshot is for env 'chess'"),
    ("missing task", lambda s: {k: v for k, v in s.items() if k != "task"}, "task"),
    ("task without id", lambda s: {**s, "task": {"env": s["task"]["env"], "params": {}}}, "task_id"),
    ("negative turn", lambda s: {**s, "turn": -1}, "turn"),
    ("turn past cap", lambda s: {**s, "turn": 99}, "exceeds max_turns"),
    ("done as string", lambda s: {**s, "done": "yes"}, "done"),
    ("reward 0.5", lambda s: {**s, "reward": 0.5}, "reward"),
]


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("label, corrupt, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_snapshots_raise_clear_errors(name, label, corrupt, message):
    state = _snapshot(name)
    with pytest.raises(EnvironmentError_, match=message):
        make_env(name).restore(corrupt(state))


@pytest.mark.parametrize(
    "name, corrupt, message",
    [
        ("multihop", lambda s: {**s, "retrieved": [10**9]}, "out of range"),
        ("multihop", lambda s: {**s, "retrieved": "abc"}, "retrieved"),
        ("frozenlake", lambda s: {**s, "state": [999]}, "impossible"),
        ("sokoban", lambda s: {**s, "state": [0] * len(s["state"])}, "impossible"),
        ("sokoban", lambda s: {**s, "state": None}, "list of ints"),
        ("math", lambda s: {**s, "shown": ["1/1"]}, "canonical"),
        ("math", lambda s: {**s, "shown": "48"}, "list of strings"),
        ("toolcall", lambda s: {**s, "calls": None}, "calls must be a list"),
        (
            "toolcall",
            lambda s: {**s, "calls": [{"name": "drop_tables", "arguments": {}}]},
            "call 0 is not a valid call",
        ),
        ("webshop", lambda s: {**s, "page": "cart"}, "page must be one of"),
        ("webshop", lambda s: {**s, "query": ""}, "query does not fit its page"),
    ],
)
def test_env_specific_corruption(name, corrupt, message):
    with pytest.raises(EnvironmentError_, match=message):
        make_env(name).restore(corrupt(_snapshot(name)))
