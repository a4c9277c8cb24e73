"""Rebuilding an allocator core after a restart from what the durable streams hold.

Make a fresh core with the same config and pool, call ``on_policy_version`` with the
learner's current version, then replay the streams: ``restore_emitted`` for each tree on
the trees stream (its id and node ids; its step is closed), ``restore_work`` for each
WorkItem still pending on the work stream (optional: acked items are gone from it),
``restore_node`` for each TurnNode on the nodes stream, and ``finish_replay`` once. A node
id seen again (replayed, then redelivered) changes nothing. Trees, backup statistics, used
turns and turn-level work items are rebuilt from the nodes; reservations of finished items
are settled to their actual use. A replayed step resumes at stage 2 (search strategies,
whose frontier is not in the streams, finish the restored step with the work already
issued).

``CrashReplay`` is mixed into ``AllocatorCore``: these methods are the core's, kept here
so that the step lifecycle reads without them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol import TaskSpec, TurnNode, WorkItem

from .step import StepState, step_of_tree, work_seq_of
from .tree import RolloutTree, WorkRecord

if TYPE_CHECKING:
    from .core import AllocatorCoreConfig, DropReason, NodeOutcome
    from .learning import OutcomeModel


@dataclass
class ReplayState:
    # Whether on_node is being called by restore_node.
    active: bool = False
    # Steps with a tree already on the trees stream, and those trees' node ids (a replayed
    # node of an emitted tree that is not in it was dropped as late).
    emitted_steps: set[int] = field(default_factory=set)
    emitted_node_ids: set[str] = field(default_factory=set)


class CrashReplay:
    # The core's state that replay reads and rebuilds (set by AllocatorCore.__init__) ...
    config: AllocatorCoreConfig
    policy_version: int
    trees: dict[str, RolloutTree]
    steps: dict[int, StepState]
    emitted: set[str]
    counters: Counter[str]
    outcomes: OutcomeModel
    _replay: ReplayState
    _base_version: int | None
    _next_step: int
    _work_seq: int
    # ... and the core's operations it uses.
    on_node: Callable[[TurnNode, float], NodeOutcome]
    _new_step: Callable[[int, float], StepState]
    _register_work: Callable[[StepState, RolloutTree, WorkRecord], None]
    _settle: Callable[[StepState, WorkRecord], None]
    _drop: Callable[[DropReason, str, Iterable[str]], None]

    def restore_emitted(self, tree_id: str, node_ids: Sequence[str] = ()) -> None:
        """Replay one CompletedTree from the trees stream: its id and the node ids it holds.

        Its step counts as closed (steps emit all their trees at once), so new steps get new
        indices and hence new tree ids, and a replayed node of that step outside these trees
        is recorded as dropped ("late").
        """
        self.emitted.add(tree_id)
        self._replay.emitted_node_ids.update(node_ids)
        step_index = step_of_tree(tree_id)
        if step_index is not None:
            self._replay.emitted_steps.add(step_index)
            self._next_step = max(self._next_step, step_index + 1)

    def restore_work(self, item: WorkItem, now: float) -> None:
        """Replay a WorkItem still pending on the work stream (issued before a restart)."""
        if item.tree_id in self.emitted:
            return
        tree = self._restored_tree(item.tree_id, item.task, now)
        if tree is None or item.work_id in tree.work:
            return
        step = self.steps[tree.step]
        reserved = item.num_samples * item.max_turns
        step.budget.restore(reserved, item.num_samples)
        self._register_work(
            step,
            tree,
            WorkRecord(item.work_id, item.parent_id, item.prefix_depth, item.num_samples, item.max_turns, reserved),
        )
        self._note_work_id(item.work_id)

    def restore_node(self, node: TurnNode, now: float) -> NodeOutcome:
        """Replay one TurnNode from the durable nodes stream after a restart.

        The work stream deletes acknowledged items, so a work item is rebuilt from its
        nodes: its chains are the nodes one turn below its prefix, and it is settled by
        ``finish_replay`` once every chain seen has ended. A chain that was still running
        keeps its item outstanding until its nodes arrive or the step times out.
        """
        if node.tree_id in self.emitted or step_of_tree(node.tree_id) in self._replay.emitted_steps:
            self.counters["nodes_late"] += 1
            if node.node_id not in self._replay.emitted_node_ids:
                self._drop("late", node.tree_id, [node.node_id])
            return "late"
        tree = self._restored_tree(node.tree_id, node.task, now)
        if tree is None:
            self.counters["nodes_unknown_tree"] += 1
            self._drop("unknown_tree", node.tree_id, [node.node_id])
            return "unknown_tree"
        step = self.steps[tree.step]
        record = tree.work.get(node.work_id)
        if record is None:
            prefix_depth = node.depth - 1
            record = WorkRecord(
                node.work_id, node.parent_id, prefix_depth, 0, self.config.max_turns - prefix_depth, 0, synthesized=True
            )
            self._register_work(step, tree, record)
            self._note_work_id(node.work_id)
        if record.synthesized and node.depth == record.prefix_depth + 1 and record.start_chain(node.node_id):
            record.num_samples += 1
            record.reserved_turns += record.max_turns
            origin = tree.nodes.get(record.parent_id) if record.parent_id is not None else None
            if origin is not None:
                origin.expansions += 1
                origin.pending_children += 1
            step.outstanding_samples += 1
            step.budget.restore(record.max_turns, 1)
        self._replay.active = True
        try:
            return self.on_node(node, now)
        finally:
            self._replay.active = False

    def finish_replay(self) -> None:
        """Settle rebuilt work items whose chains have all ended; call once after replay."""
        self._replay.emitted_node_ids.clear()
        if self._base_version is None and self._next_step:
            # Only closed steps were replayed: take the learner as caught up with them, so the
            # next step opens now. Assuming it had trained none of them instead would hold new
            # steps for versions that only those steps' updates would bring.
            self._base_version = self.policy_version - self._next_step
        elif self._base_version is not None and self._replay.emitted_steps:
            # A step reopened from its nodes may be older than emitted ones: one that timed out
            # empty, its nodes late. Counting versions from it would hold every new step for
            # versions that steps without trees never bring; take the learner as caught up
            # with the emitted steps, as above.
            caught_up = self.policy_version - (max(self._replay.emitted_steps) + 1)
            self._base_version = min(self._base_version, caught_up)
        for step in self.steps.values():
            for tree_id in step.tree_ids:
                for record in self.trees[tree_id].work.values():
                    if record.synthesized and record.finished and not record.settled:
                        self._settle(step, record)
            if step.budget.committed > step.budget.total_turns:
                self.counters["restore_over_budget"] += 1

    def _restored_tree(self, tree_id: str, task: TaskSpec, now: float) -> RolloutTree | None:
        """The tree (and step) of a replayed message, created on first sight."""
        tree = self.trees.get(tree_id)
        if tree is not None:
            return tree
        step_index = step_of_tree(tree_id)
        if step_index is None:
            self.counters["restore_foreign_tree_ids"] += 1
            return None
        if step_index in self._replay.emitted_steps:
            # A tree its step closed without (no complete path): reopening the step would
            # emit a second batch for a step the learner has already taken.
            return None
        step = self.steps.get(step_index)
        if step is None:
            step = self._new_step(step_index, now)
            step.roots_issued = True
            self._next_step = max(self._next_step, step_index + 1)
            if self._base_version is None:
                # The learner's history is not replayed: treat the oldest replayed step as the
                # one the current version trains on (call on_policy_version before replaying).
                self._base_version = self.policy_version - step_index
        tree = RolloutTree(tree_id, task, step_index, now)
        self.trees[tree_id] = tree
        step.tree_ids.append(tree_id)
        step.tasks.add(task.task_id)
        self.outcomes.open_tree(tree_id, task)
        return tree

    def _note_work_id(self, work_id: str) -> None:
        seq = work_seq_of(work_id)
        if seq is not None:
            self._work_seq = max(self._work_seq, seq)
