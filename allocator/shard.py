"""Allocator shards: the task pool partitioned by prompt over K allocator processes (pure).

One allocator's schedule() cost grows with the nodes it holds open, so past its ceiling
(bench/results/scale.md) K allocators share the run: each owns the prompts ``shard_of_prompt``
maps to it, plans steps over those prompts only with ``1/K`` of the step's budget, and so
every tree (one prompt's rollouts) belongs to exactly one shard. The shards share the
run's streams; ``protocol.subjects`` names what each one consumes. Shard 0 of 1 is the
single allocator, with its names and budgets unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from protocol import TaskSpec, replace
from tracerl.config import AtLeast0, AtLeast1, Config

if TYPE_CHECKING:
    from allocator.core import AllocatorCoreConfig

#: The tree-id prefix of shard k > 0 is ``k<k>-``: ids stay unique across shards, and the
#: step is still the ``s<step>-<seq>`` tail (allocator.step).
TREE_PREFIX = "k"


class ShardConfig(Config, frozen=True):
    """Which of ``count`` allocator shards this process is."""

    index: AtLeast0 = 0
    count: AtLeast1 = 1

    def __post_init__(self) -> None:
        if self.index >= self.count:
            raise ValueError(f"allocator.shard.index must be in [0, {self.count}); got {self.index}")

    @property
    def role_name(self) -> str:
        """The name of this shard's process, logs, metrics and records: ``allocator`` for shard 0."""
        return "allocator" if self.index == 0 else f"allocator-{self.index}"

    @property
    def tree_prefix(self) -> str:
        return "" if self.index == 0 else f"{TREE_PREFIX}{self.index}-"


def prompt_key(task: TaskSpec) -> str:
    """What a prompt is partitioned by: its environment and task id."""
    return f"{task.env}/{task.task_id}"


def shard_of_prompt(key: str, count: int) -> int:
    """The shard that owns prompt ``key``: a stable hash (the same in every process and
    Python version, unlike ``hash``), reduced modulo ``count``."""
    if count < 1:
        raise ValueError("count must be >= 1")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_pool(pool: Sequence[TaskSpec], shard: ShardConfig) -> list[TaskSpec]:
    """The prompts of ``pool`` that ``shard`` plans, in pool order."""
    return [task for task in pool if shard_of_prompt(prompt_key(task), shard.count) == shard.index]


def shard_share(total: int, shard: ShardConfig) -> int:
    """Shard ``index``'s part of ``total`` split over ``count`` shards: the parts differ by at
    most one (the first ``total % count`` shards take one more) and add up to ``total``."""
    base, extra = divmod(total, shard.count)
    return base + (1 if shard.index < extra else 0)


def shard_step(core: AllocatorCoreConfig, shard: ShardConfig) -> AllocatorCoreConfig:
    """A step's shape for one shard: its share of the step's turn budget and of its prompts.

    The learner's step is then the union of every shard's step of the same index, with the
    budget and prompts of the configured step.
    """
    if shard.count == 1:
        return core
    return replace(
        core,
        step_budget_turns=shard_share(core.step_budget_turns, shard),
        batch_prompts=max(1, shard_share(core.batch_prompts, shard)),
    )


__all__ = ["ShardConfig", "prompt_key", "shard_of_prompt", "shard_pool", "shard_share", "shard_step"]
