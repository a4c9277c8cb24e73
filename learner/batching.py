"""Which buffered trees make the next learner update (pure).

By default one update consumes exactly the trees of one allocator step. The allocator
emits a step's trees together and stamps each with ``step_tree_count``, so a step is whole
when that many have arrived. Keeping updates aligned with allocator steps is what lets the
allocator's staleness bound ("at most eta steps ahead of the learner") mean versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import CompletedTree


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
        expected = max(tree.step_tree_count for _, tree in members)
        # Duplicates (a redelivered tree) must not complete a step early.
        distinct = {tree.tree_id for _, tree in members}
        later_waiting = [t for t, tree in self._pending if tree.allocator_step != oldest_step]
        overdue = bool(later_waiting) and now - min(later_waiting) >= self.step_wait_s
        if len(distinct) < expected and not overdue:
            return None
        self._pending = [(t, tree) for t, tree in self._pending if tree.allocator_step != oldest_step]
        unique: dict[str, CompletedTree] = {}
        for _, tree in members:
            unique.setdefault(tree.tree_id, tree)
        return list(unique.values())
