"""Validation helpers shared by every environment's ``snapshot``/``restore``."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol import TaskSpec

from .base import EnvironmentError_


def require(condition: bool, message: str) -> None:
    if not condition:
        raise EnvironmentError_(f"corrupt snapshot: {message}")


def task_to_plain(task: TaskSpec) -> dict[str, Any]:
    plain: dict[str, Any] = msgspec.to_builtins(task, builtin_types=(bytes,))
    return plain


def task_from_plain(data: Any) -> TaskSpec:
    try:
        return msgspec.convert(data, TaskSpec)
    except msgspec.ValidationError as err:
        raise EnvironmentError_(f"corrupt snapshot: task: {err}") from err


def episode_snapshot(
    env_name: str, task: TaskSpec, turn: int, done: bool, reward: float, **state: Any
) -> dict[str, Any]:
    """The fields every episode snapshot has, plus the environment's own ``state``."""
    return {"env": env_name, "task": task_to_plain(task), "turn": turn, "done": done, "reward": reward, **state}


def read_episode_snapshot(snapshot: Any, env_name: str, graded: bool = False) -> tuple[TaskSpec, int, bool, float]:
    """Validate the common fields of ``episode_snapshot``; returns (task, turn, done, reward).

    Rewards are 0 or 1, or anything in [0, 1] for an environment with ``graded`` rewards."""
    require(isinstance(snapshot, dict), f"{env_name} snapshot must be a mapping, got {type(snapshot).__name__}")
    require(snapshot.get("env") == env_name, f"snapshot is for env {snapshot.get('env')!r}, not {env_name!r}")
    task = task_from_plain(snapshot.get("task"))
    turn, done, reward = snapshot.get("turn"), snapshot.get("done"), snapshot.get("reward")
    require(type(turn) is int and turn >= 0, f"snapshot turn must be a non-negative int, got {turn!r}")
    require(type(done) is bool, f"snapshot done must be a bool, got {done!r}")
    if graded:
        require(type(reward) in (int, float) and 0 <= reward <= 1, f"snapshot reward must be in [0, 1], got {reward!r}")
    else:
        require(type(reward) in (int, float) and reward in (0, 1), f"snapshot reward must be 0 or 1, got {reward!r}")
    return task, turn, done, float(reward)
