"""Which buffered trees make the next learner update (pure).

By default one update consumes exactly the trees of one allocator step. The allocator
emits a step's trees together and stamps each with ``step_tree_count``, so a step is whole
when that many have arrived. Keeping updates aligned with allocator steps is what lets the
allocator's staleness bound ("at most eta steps ahead of the learner") mean versions.

With K allocator shards (``allocator.shard``) a learner step is the trees of one step index
from every shard: each shard stamps its trees with its index, the shard count and its own
``step_tree_count``, and the step is whole when every shard's part is (``step_is_whole``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol import CompletedTree


def step_is_whole(trees: Iterable[CompletedTree]) -> bool:
    """Whether ``trees`` (of one allocator step, duplicates allowed) hold every tree of the
    step: from each of the ``shard_count`` shards, as many distinct trees as that shard
    emitted. A shard none of whose trees has come yet is not whole."""
    by_shard: dict[int, set[str]] = {}
    expected: dict[int, int] = {}
    shards = 0
    for tree in trees:
        by_shard.setdefault(tree.shard, set()).add(tree.tree_id)
        expected[tree.shard] = max(expected.get(tree.shard, 0), tree.step_tree_count)
        shards = max(shards, tree.shard_count)
    return shards > 0 and all(len(by_shard.get(k, ())) >= expected.get(k, 1) for k in range(shards))


@dataclass
class StepBatcher:
    trees_per_step: int = 0
    step_wait_s: float = 30.0
    _pending: list[tuple[float, CompletedTree]] = field(default_factory=list)

    def add(self, tree: CompletedTree, now: float) -> None:
        self._pending.append((now, tree))

    def __len__(self) -> int:
        return len(self._pending)

    def next_batch(self, now: float) -> list[CompletedTree] | None:
        if not self._pending:
            return None
        if self.trees_per_step:
            if len(self._pending) < self.trees_per_step:
                return None
            taken, self._pending = self._pending[: self.trees_per_step], self._pending[self.trees_per_step :]
            return [tree for _, tree in taken]
        oldest_step = min(tree.allocator_step for _, tree in self._pending)
        members = [(t, tree) for t, tree in self._pending if tree.allocator_step == oldest_step]
        later_waiting = [t for t, tree in self._pending if tree.allocator_step != oldest_step]
        overdue = bool(later_waiting) and now - min(later_waiting) >= self.step_wait_s
        # Duplicates (a redelivered tree) must not complete a step early.
        if not overdue and not step_is_whole(tree for _, tree in members):
            return None
        self._pending = [(t, tree) for t, tree in self._pending if tree.allocator_step != oldest_step]
        unique: dict[str, CompletedTree] = {}
        for _, tree in members:
            unique.setdefault(tree.tree_id, tree)
        return list(unique.values())
