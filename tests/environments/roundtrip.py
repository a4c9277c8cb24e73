"""The snapshot check every environment's tests share: an episode restored from its snapshot at
any turn, into a fresh instance, continues exactly as the original."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from environments import make_env
from protocol import TaskSpec


def assert_restores_at_every_turn(
    env_name: str,
    tasks: Iterable[TaskSpec],
    choose_action: Callable[[Any, random.Random], str],
    turns: int,
    episodes_per_task: int,
    seed: int = 0,
) -> None:
    """For each task, ``episodes_per_task`` episodes of ``turns`` actions, each chosen from the
    state it is taken in; the snapshot (through msgpack) of every turn, restored into a fresh
    instance and replayed, must end where the episode ends."""
    rng = random.Random(seed)
    for task in tasks:
        for _ in range(episodes_per_task):
            env = make_env(env_name)
            env.reset(task)
            actions, recorded = [], []
            for _ in range(turns):
                recorded.append(msgpack.packb(env.snapshot()))
                actions.append(choose_action(env, rng))
                env.step(actions[-1])
            final = env.snapshot()
            for turn, wire in enumerate(recorded):
                clone = make_env(env_name)
                clone.restore(msgpack.unpackb(wire))
                assert clone.snapshot() == msgpack.unpackb(wire)
                for action in actions[turn:]:
                    clone.step(action)
                assert clone.snapshot() == final, (task.task_id, turn)
                assert clone.score() == env.score()
