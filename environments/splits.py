"""Train/held-out separation shared by every task generator."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any, Literal

from protocol import TaskSpec

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def split_parity(split: str) -> int:
    """0 for train, 1 for held-out: generators give every instance seed this parity, so the
    two splits can never produce the same instance whatever seeds the caller picks."""
    check_split(split)
    return SPLITS.index(split)


def split_of_content(content: str) -> str:
    """The split an instance belongs to, decided by a stable hash of its full description.

    Generators keep only instances whose content hashes into the requested split, so train
    and held-out sets are disjoint by construction (identical content, identical split).
    """
    digest = hashlib.sha256(content.encode()).digest()
    return SPLITS[digest[0] & 1]


#: A proposed instance: its full description (which decides its split) and a function giving
#: its task params, or ``None`` to reject it.
Proposal = tuple[str, Callable[[], dict[str, Any] | None]]


def distinct_tasks(
    env_name: str,
    split: str,
    count: int,
    seed: int,
    propose: Callable[[random.Random], Proposal | None],
    attempts_per_task: int,
) -> list[TaskSpec]:
    """``count`` distinct tasks of ``split`` drawn from ``propose(rng)`` (``None``: draw again).

    A proposal's split is decided from its description before its params are asked for, so
    costly checks (solving a level) run only for instances of the requested split. Identical
    descriptions are one task, named by the description's hash.
    """
    rng = random.Random(f"{env_name}:{split}:{seed}")
    tasks: dict[str, TaskSpec] = {}
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > attempts_per_task * count + 1000:
            raise ValueError(f"could not generate {count} distinct {env_name} tasks; loosen the difficulty knobs")
        proposal = propose(rng)
        if proposal is None or split_of_content(proposal[0]) != split:
            continue
        params = proposal[1]()
        if params is None:
            continue
        task_id = f"{env_name}-{hashlib.sha256(proposal[0].encode()).hexdigest()[:16]}"
        tasks.setdefault(task_id, TaskSpec(env=env_name, task_id=task_id, params=params))
    return list(tasks.values())
