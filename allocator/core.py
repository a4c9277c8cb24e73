"""AllocatorCore: the allocator as one synchronous state machine with no I/O.

The NATS shell (allocator/service.py) owns the clock, the bus and the actor registry. It
feeds every TurnNode to ``on_node``, the learner's version to ``on_policy_version``, asks
``schedule`` for routed work and ``pop_completed`` for trees to publish. Everything here is
deterministic given the config, the task pool, the seed and that call sequence.

Step life cycle (one allocator step = one batch for the learner):
  1. open: a candidate pool is drawn and stage 1 issues root work (kind "root").
  2. rounds: whenever the step has no outstanding work, the strategy plans the next
     round (stage-2 branches, the next search turn, or more root groups for stage-1-only
     strategies) within the remaining budget. An empty plan closes the step. TRACE plans
     its rounds a slice per ``schedule`` call (RootsJob, BranchesJob), so that no call
     takes long however many nodes are open; ``busy`` tells the shell to call again soon.
  3. close: every tree of the step becomes a CompletedTree ("complete", or "partial" when
     the step timed out with work outstanding); the predictor and prompt statistics learn
     from it. Steps overlap: step s+1 may open while s is in its last rounds, as long as
     the allocator is at most ``staleness_eta`` versions ahead of the learner.

Rebuilding after a restart: make a fresh core with the same config and pool, call
``on_policy_version`` with the learner's current version, then replay the durable streams:
``restore_emitted`` for each tree on the trees stream (its id and node ids; its step is
closed), ``restore_work`` for each WorkItem still pending on the work stream (optional:
acked items are gone from it), ``restore_node`` for each TurnNode on the nodes stream, and
``finish_replay`` once. A node id seen again (replayed, then redelivered) changes nothing.
Trees, backup statistics, used turns and turn-level work items are rebuilt from the nodes;
reservations of finished items are settled to their actual use. A replayed step resumes at
stage 2 (search strategies, whose frontier is not in the streams, finish the restored
step with the work already issued).

Every node the core will not pass on (late, unknown tree, expired or left-over orphan, not
on a complete path) is listed by ``pop_dropped``, so that the shell can record it by id.
"""

from __future__ import annotations

import functools
import dataclasses
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from protocol import CompletedTree, SamplingSpec, TaskSpec, TurnNode, WorkItem
from tracerl.logs import get_logger

from .allocation import PrefixGreedy, RootsDP
from .budget import BudgetLedger
from .predictor import BetaBaseline, PredictorConfig, PromptStats, SharedPredictor, SparseFeatures
from .predictor import auc as auc_score
from .predictor import calibration_error
from .predictor import features_from_counts, merge_counts, text_counts, turn_counts
from .selection import (
    dps_category,
    dps_emission,
    dps_predict,
    dps_prior,
    dps_transition,
    dps_update,
    select_dps,
    select_gps,
)
from .tree import NodeState, RolloutTree, WorkRecord, at_horizon

log = get_logger(__name__)

STRATEGIES = ("grpo", "tree-random", "entropy", "gps", "dps", "tsr-bon", "tsr-beam", "tsr-lookahead", "trace")
STAGE2_CHOICES = ("none", "trace", "tree-random", "entropy")
# Which stage 1 and stage 2 each named strategy runs; gps and dps take stage 2 from config.
_STAGE1 = {
    "grpo": "uniform",
    "tree-random": "uniform",
    "entropy": "uniform",
    "gps": "gps",
    "dps": "dps",
    "trace": "trace",
}
_FIXED_STAGE2 = {"grpo": "none", "tree-random": "tree-random", "entropy": "entropy", "trace": "trace"}

# Why a received node will never reach the learner; see ``AllocatorCore.pop_dropped``.
DropReason = Literal["late", "unknown_tree", "orphan_expired", "orphan_at_close", "left_out"]

Issued = tuple[WorkItem, str | None]  # the item and the actor holding its prefix, if any
Issue = Callable[[float], Issued | None]  # builds, reserves and registers one item at time `now`
NodeOutcome = Literal["accepted", "duplicate", "unknown_tree", "buffered_orphan", "late"]


@dataclass(frozen=True)
class AllocatorCoreConfig:
    strategy: str = "trace"
    # Stage 2 paired with the gps or dps prompt selectors; ignored by the other strategies.
    stage2: str = "none"
    # Prompts per uniform batch and rollouts per prompt (GRPO's group size).
    batch_prompts: int = 16
    group_size: int = 4
    # Candidate pool = pool_factor x the prompts a uniform batch would take.
    pool_factor: int = 4
    step_budget_turns: int = 256
    # Share of the step budget that stage 1 may reserve when a stage 2 follows.
    root_fraction: float = 0.75
    max_turns: int = 4
    max_per_prompt: int = 8
    # Most continuations from one prefix in one stage-2 round.
    branch_k: int = 2
    staleness_eta: int = 2
    max_open_steps: int = 2
    orphan_timeout_s: float = 60.0
    step_timeout_s: float = 900.0
    # Exponential forgetting of per-prompt outcome counts at every observation.
    prompt_stats_decay: float = 0.8
    entropy_rise: float = 0.0
    gps_diversity: float = 0.2
    dps_stickiness: float = 0.8
    tsr_width: int = 4
    tsr_lookahead_turns: int = 1
    # Bounds the work one schedule() call builds, so a large round is spread over calls.
    # With plan_units_per_call it keeps a call to about a millisecond on a small core
    # (bench/allocator_latency.py), so the shell's event loop is never held for long.
    max_items_per_call: int = 32
    # Bounds the planning one schedule() call does, in units of about a microsecond (see
    # RootsJob), so planning a round over 10^4 open nodes is spread over calls too.
    plan_units_per_call: int = 300
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"allocator.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.stage2 not in STAGE2_CHOICES:
            raise ValueError(f"allocator.stage2 must be one of {', '.join(STAGE2_CHOICES)}; got {self.stage2!r}")
        for name in (
            "batch_prompts",
            "pool_factor",
            "max_turns",
            "branch_k",
            "max_open_steps",
            "tsr_width",
            "max_items_per_call",
            "plan_units_per_call",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"allocator.{name} must be >= 1")
        if self.group_size < 2:
            raise ValueError("allocator.group_size must be >= 2 (one rollout is never mixed)")
        if self.max_per_prompt < 2:
            raise ValueError("allocator.max_per_prompt must be >= 2")
        if self.step_budget_turns < 2 * self.max_turns:
            raise ValueError("allocator.step_budget_turns must cover at least two full rollouts")
        if not 0 < self.root_fraction <= 1:
            raise ValueError("allocator.root_fraction must be in (0, 1]")
        if self.staleness_eta < 0:
            raise ValueError("allocator.staleness_eta must be >= 0")
        if self.orphan_timeout_s <= 0 or self.step_timeout_s <= 0:
            raise ValueError("allocator timeouts must be > 0")
        if not 0 < self.prompt_stats_decay <= 1:
            raise ValueError("allocator.prompt_stats_decay must be in (0, 1]")
        if not 0 <= self.dps_stickiness <= 1:
            raise ValueError("allocator.dps_stickiness must be in [0, 1]")
        if self.tsr_lookahead_turns < 0:
            raise ValueError("allocator.tsr_lookahead_turns must be >= 0")

    @property
    def stage1(self) -> str:
        return _STAGE1.get(self.strategy, "uniform")

    @property
    def stage2_kind(self) -> str:
        if self.strategy.startswith("tsr-"):
            return "search"
        return _FIXED_STAGE2.get(self.strategy, self.stage2)


@dataclass(frozen=True)
class ActorLoad:
    actor_id: str
    inflight: int
    capacity: int


@dataclass(frozen=True)
class RoutedWork:
    """A work item and where to send it: an actor id, or None for the shared queue."""

    item: WorkItem
    target: str | None


@dataclass
class SearchChain:
    """One TSR search path: its current frontier node, or finished."""

    frontier: str | None
    pending_work: str | None = None
    finished: bool = False


@dataclass
class StepState:
    index: int
    opened_at: float
    budget: BudgetLedger
    tree_ids: list[str] = field(default_factory=list)
    tasks: set[str] = field(default_factory=set)
    roots_issued: bool = False
    rounds: int = 0
    search: dict[str, list[SearchChain]] = field(default_factory=dict)
    # Issued work items (and their samples) whose chains have not all come back.
    outstanding_items: int = 0
    outstanding_samples: int = 0
    # Planned work not yet handed out; a call issues at most max_items_per_call of it.
    queue: deque[Issue] = field(default_factory=deque)
    # The round being planned, when planning it takes more than one call.
    job: RootsJob | BranchesJob | None = None


# What planning work costs, in units of about a microsecond on a small x86 core. A call
# spends at most AllocatorCoreConfig.plan_units_per_call of them (plus one piece that
# cannot be split), so these only need to be right to within a factor of about two.
_UNITS_DRAW_PER_TASK = 0.1  # a pool draw, per task in the task pool
_UNITS_FEATURIZE = 50  # a prompt's features built from scratch (cached afterwards)
_UNITS_SCORE = 4.5  # a prefix or prompt through the batched predictor
_UNITS_SCAN = 1.5  # a node checked for branchability
_UNITS_ALLOCATE = 0.3  # a candidate in the stage-2 greedy's final merge
_UNITS_EMIT = 2.5  # a planned item wrapped for the queue
_UNITS_TRACE = 4  # a prompt of the root DP's trace-back
_DP_CELLS_PER_UNIT = 450  # root-DP table cells computed per unit


@dataclass
class RootsJob:
    """TRACE stage 1 being planned: draw the pool, score it, run the DP, wrap the items.

    Why in slices: with a pool of thousands of prompts and a budget of thousands of
    rollouts, scoring and the exact DP take tens of milliseconds, and the scheduler tick
    that does them must stay within a few milliseconds (``schedule`` is also where
    timeouts, step opening and hand-out happen). Each slice is sized by the units left in
    the call, and the round planned does not depend on how the work was sliced.
    """

    rollouts: int
    pool: list[TaskSpec] | None = None
    values: list[float] = field(default_factory=list)
    revision: int = -1
    dp: RootsDP | None = None
    counts: list[int] | None = None
    plan: list[Issue] = field(default_factory=list)
    emitted: int = 0


@dataclass
class BranchesJob:
    """A TRACE stage-2 round being planned: gather candidates tree by tree, score the ones
    whose cached prediction is stale, run the vectorised greedy, wrap the items. Sliced for
    the same reason as RootsJob."""

    trees_scanned: int = 0
    candidates: list[tuple[RolloutTree, NodeState]] = field(default_factory=list)
    outcome: list[float] = field(default_factory=list)
    cost: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)
    scored: int = 0
    revision: int = -1
    greedy: PrefixGreedy = field(default_factory=PrefixGreedy)
    chosen: list[int] | None = None  # candidates given continuations, and how many each
    continuations: list[int] = field(default_factory=list)
    plan: list[Issue] = field(default_factory=list)


def default_prompt_text(task: TaskSpec) -> str:
    """Text the predictor sees for a prompt when the shell gives no better function."""
    for key in ("question", "prompt", "text"):
        value = task.params.get(key)
        if isinstance(value, str):
            return value
    return " ".join(str(v) for v in task.params.values() if isinstance(v, (str, int, float)))


_STEP_OF_TREE = re.compile(r"s(\d+)-\d+$")


_WORK_SEQ = re.compile(r"\.w(\d+)$")


def tree_id_for(step: int, seq: int, prefix: str = "") -> str:
    """``<prefix>s<step>-<seq>``: the step is recoverable from the id alone (for replay)."""
    return f"{prefix}s{step}-{seq}"


def step_of_tree(tree_id: str) -> int | None:
    match = _STEP_OF_TREE.search(tree_id)
    return int(match.group(1)) if match else None


def turn_entropy(node: TurnNode) -> float:
    """Mean -logprob of the sampled tokens: an unbiased estimate of the turn's token entropy."""
    if not node.action_logprobs:
        return 0.0
    return -float(sum(node.action_logprobs)) / len(node.action_logprobs)


class AllocatorCore:
    def __init__(
        self,
        config: AllocatorCoreConfig,
        task_pool: Sequence[TaskSpec],
        seed: int,
        *,
        run_id: str = "default",
        prompt_text: Callable[[TaskSpec], str] = default_prompt_text,
        id_prefix: str = "",
    ) -> None:
        """``id_prefix`` starts every tree id (and so every work and node id); give each
        allocator incarnation that does not replay its predecessor's streams a new one, so
        ids never collide with an earlier run's in JetStream's duplicate window."""
        if not task_pool:
            raise ValueError("the task pool is empty")
        self.config = config
        self.task_pool = list(task_pool)
        self.run_id = run_id
        self.prompt_text = prompt_text
        self.id_prefix = id_prefix
        self.rng = np.random.default_rng(seed)
        self.predictor = SharedPredictor(config.predictor)
        self.beta = BetaBaseline()
        self.policy_version = 0
        self._base_version: int | None = None
        self._next_step = 0
        self._work_seq = 0
        self.trees: dict[str, RolloutTree] = {}
        self.steps: dict[int, StepState] = {}
        self.emitted: set[str] = set()
        self._completed: list[CompletedTree] = []
        self.prompt_stats: dict[str, PromptStats] = {}
        self.dps_belief: dict[str, np.ndarray] = {}
        self._root_features: dict[str, SparseFeatures] = {}
        self._prompt_count_cache: dict[str, dict[int, float]] = {}
        # A prompt's root features and the statistics they were built with.
        self._root_feature_cache: dict[str, tuple[PromptStats, SparseFeatures]] = {}
        self._trees_with_orphans: set[str] = set()
        self._replaying = False
        # Every node this core decided not to pass on, by id: (reason, tree id, node id).
        self._dropped: list[tuple[DropReason, str, str]] = []
        # Replay only: steps with a tree already on the trees stream, and those trees' node
        # ids (a replayed node of an emitted tree that is not in it was dropped as late).
        self._emitted_steps: set[int] = set()
        self._emitted_node_ids: set[str] = set()
        self.counters: Counter[str] = Counter()
        self._closed_budget = Counter()
        # Prequential predictor scores over a sliding window of the most recent samples.
        window = 20_000
        self._evaluation: dict[str, deque[float]] = {
            "p": deque(maxlen=window),
            "beta": deque(maxlen=window),
            "target": deque(maxlen=window),
        }
        # Recent stage-1 decisions (step, candidate task ids, rollouts each) for diagnostics.
        self.stage1_log: deque[tuple[int, tuple[str, ...], tuple[int, ...]]] = deque(maxlen=4096)
        self._informative_tokens = 0
        self._trained_tokens = 0

    # ------------------------------------------------------------------ inputs

    def on_policy_version(self, version: int) -> None:
        if version < self.policy_version:
            self.counters["version_regressions"] += 1
            return
        self.policy_version = version

    def on_node(self, node: TurnNode, now: float) -> NodeOutcome:
        node = at_horizon(node, self.config.max_turns)
        if node.tree_id in self.emitted:
            self.counters["nodes_late"] += 1
            self._drop("late", node.tree_id, [node.node_id])
            return "late"
        tree = self.trees.get(node.tree_id)
        if tree is None:
            self.counters["nodes_unknown_tree"] += 1
            self._drop("unknown_tree", node.tree_id, [node.node_id])
            return "unknown_tree"
        outcome, attached = tree.add(node, now)
        self.counters[f"nodes_{outcome}"] += 1
        if tree.orphans:
            self._trees_with_orphans.add(tree.tree_id)
        step = self.steps.get(tree.step)
        for current in attached:
            if self.policy_version - current.policy_version > self.config.staleness_eta:
                self.counters["nodes_stale_version"] += 1
            state = tree.nodes[current.node_id]
            state.features = self._featurize_node(tree, state)
            record = tree.work.get(current.work_id)
            if record is None:
                self.counters["nodes_without_work"] += 1
                continue
            if step is not None:
                step.budget.record_turn(len(current.action_token_ids))
            # A rebuilt item learns its chains during replay; it settles in finish_replay.
            if record.finished and not record.settled and not (self._replaying and record.synthesized):
                if step is not None:
                    self._settle(step, record)
                else:
                    record.settled = True
        return outcome

    def restore_emitted(self, tree_id: str, node_ids: Sequence[str] = ()) -> None:
        """Replay one CompletedTree from the trees stream: its id and the node ids it holds.

        Its step counts as closed (steps emit all their trees at once), so new steps get new
        indices and hence new tree ids, and a replayed node of that step outside these trees
        is recorded as dropped ("late").
        """
        self.emitted.add(tree_id)
        self._emitted_node_ids.update(node_ids)
        step_index = step_of_tree(tree_id)
        if step_index is not None:
            self._emitted_steps.add(step_index)
            self._next_step = max(self._next_step, step_index + 1)

    def _restored_tree(self, tree_id: str, task: TaskSpec, now: float) -> RolloutTree | None:
        """The tree (and step) of a replayed message, created on first sight."""
        tree = self.trees.get(tree_id)
        if tree is not None:
            return tree
        step_index = step_of_tree(tree_id)
        if step_index is None:
            self.counters["restore_foreign_tree_ids"] += 1
            return None
        if step_index in self._emitted_steps:
            # A tree its step closed without (no complete path): reopening the step would
            # emit a second batch for a step the learner has already taken.
            return None
        step = self.steps.get(step_index)
        if step is None:
            step = StepState(step_index, now, BudgetLedger(self.config.step_budget_turns))
            step.roots_issued = True
            self.steps[step_index] = step
            self._next_step = max(self._next_step, step_index + 1)
            if self._base_version is None:
                # The learner's history is not replayed: treat the oldest replayed step as the
                # one the current version trains on (call on_policy_version before replaying).
                self._base_version = self.policy_version - step_index
        tree = RolloutTree(tree_id, task, step_index, now)
        self.trees[tree_id] = tree
        step.tree_ids.append(tree_id)
        step.tasks.add(task.task_id)
        self._root_features[tree_id] = self._featurize_root(task)
        return tree

    def _note_work_id(self, work_id: str) -> None:
        match = _WORK_SEQ.search(work_id)
        if match:
            self._work_seq = max(self._work_seq, int(match.group(1)))

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
            step, tree, WorkRecord(item.work_id, item.parent_id, item.prefix_depth, item.num_samples, item.max_turns, reserved)
        )
        self._note_work_id(item.work_id)

    def restore_node(self, node: TurnNode, now: float) -> NodeOutcome:
        """Replay one TurnNode from the durable nodes stream after a restart.

        The work stream deletes acknowledged items, so a work item is rebuilt from its
        nodes: its chains are the nodes one turn below its prefix, and it is settled by
        ``finish_replay`` once every chain seen has ended. A chain that was still running
        keeps its item outstanding until its nodes arrive or the step times out.
        """
        if node.tree_id in self.emitted or step_of_tree(node.tree_id) in self._emitted_steps:
            self.counters["nodes_late"] += 1
            if node.node_id not in self._emitted_node_ids:
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
        self._replaying = True
        try:
            return self.on_node(node, now)
        finally:
            self._replaying = False

    def finish_replay(self) -> None:
        """Settle rebuilt work items whose chains have all ended; call once after replay."""
        self._emitted_node_ids.clear()
        if self._base_version is None and self._next_step:
            # Only closed steps were replayed: take the learner as caught up with them, so the
            # next step opens now. Assuming it had trained none of them instead would hold new
            # steps for versions that only those steps' updates would bring.
            self._base_version = self.policy_version - self._next_step
        for step in self.steps.values():
            for tree_id in step.tree_ids:
                for record in self.trees[tree_id].work.values():
                    if record.synthesized and record.finished and not record.settled:
                        self._settle(step, record)
            if step.budget.committed > step.budget.total_turns:
                self.counters["restore_over_budget"] += 1

    def _settle(self, step: StepState, record: WorkRecord) -> None:
        record.settled = True
        step.budget.settle(record.reserved_turns, record.turns_used)
        step.outstanding_items -= 1
        step.outstanding_samples -= record.num_samples

    # ------------------------------------------------------------------ scheduling

    def schedule(self, now: float, actors: Sequence[ActorLoad]) -> list[RoutedWork]:
        """Work to send now. Cheap when nothing changed: planning runs only for steps whose
        previous round has fully come back, and at most ``plan_units_per_call`` of it per
        call (see ``busy``)."""
        self._expire(now)
        routed: list[RoutedWork] = []
        assigned: Counter[str] = Counter()
        load = {a.actor_id: a for a in actors}
        self._maybe_open_step(now, actors)
        cap = self.config.max_items_per_call
        units = float(self.config.plan_units_per_call)
        for index in sorted(self.steps):
            step = self.steps[index]
            if not step.queue:
                if step.outstanding_items or units <= 0:
                    continue
                plan, units = self._advance_plan(step, now, units)
                if plan is None:
                    continue
                if not plan:
                    self._close_step(step, now, forced=False)
                    continue
                step.rounds += 1
                step.queue.extend(plan)
            while step.queue and len(routed) < cap:
                issued = step.queue.popleft()(now)
                if issued is None:
                    self.counters["planned_items_unaffordable"] += 1
                    continue
                item, origin_actor = issued
                target = None
                if origin_actor is not None:
                    actor = load.get(origin_actor)
                    if actor is not None and actor.inflight + assigned[origin_actor] < actor.capacity:
                        target = origin_actor
                        assigned[origin_actor] += 1
                        self.counters["affinity_hits"] += 1
                    else:
                        self.counters["affinity_misses"] += 1
                routed.append(RoutedWork(item, target))
        self.counters["work_items_issued"] += len(routed)
        return routed

    @property
    def busy(self) -> bool:
        """A round is part-planned or planned work waits: the shell should call ``schedule``
        again right away (after serving its other tasks) instead of a tick later."""
        return any(step.job is not None or step.queue for step in self.steps.values())

    def is_outstanding(self, tree_id: str, work_id: str) -> bool:
        """Whether a work item issued for an open tree still has chains to come back."""
        tree = self.trees.get(tree_id)
        record = tree.work.get(work_id) if tree is not None else None
        return record is not None and not record.finished

    def pop_completed(self, now: float) -> list[CompletedTree]:
        self._expire(now)
        out, self._completed = self._completed, []
        return out

    def pop_dropped(self) -> list[tuple[DropReason, str, str]]:
        """(reason, tree id, node id) of every received node dropped since the last call.

        The shell records them durably before publishing the trees that closed with them,
        so a run can be reconciled node by node: every node on the nodes stream is in a
        CompletedTree or here (counters alone cannot say which, nor survive a crash).
        """
        out, self._dropped = self._dropped, []
        return out

    def held_nodes(self) -> list[tuple[str, list[str]]]:
        """(tree id, node ids) of every open tree, orphans included: what a stop leaves in
        the streams for the next incarnation's replay."""
        return [(tree_id, [*tree.nodes, *sorted(tree.orphan_ids)]) for tree_id, tree in self.trees.items()]

    def _drop(self, reason: DropReason, tree_id: str, node_ids: Iterable[str]) -> None:
        self._dropped.extend((reason, tree_id, node_id) for node_id in node_ids)

    def _expire(self, now: float) -> None:
        for tree_id in list(self._trees_with_orphans):
            tree = self.trees.get(tree_id)
            if tree is not None:
                dropped = tree.expire_orphans(now, self.config.orphan_timeout_s)
                if dropped:
                    self.counters["orphans_dropped"] += len(dropped)
                    self._drop("orphan_expired", tree_id, dropped)
            if tree is None or not tree.orphans:
                self._trees_with_orphans.discard(tree_id)
        for index in sorted(self.steps):
            step = self.steps[index]
            if now - step.opened_at > self.config.step_timeout_s:
                self._close_step(step, now, forced=True)

    def _expected_version(self, step_index: int) -> int:
        base = self.policy_version if self._base_version is None else self._base_version
        return base + step_index

    def _maybe_open_step(self, now: float, actors: Sequence[ActorLoad]) -> None:
        if len(self.steps) >= self.config.max_open_steps:
            return
        if self._expected_version(self._next_step) - self.policy_version > self.config.staleness_eta:
            self.counters["steps_held_for_learner"] += 1
            return
        if self.steps:
            newest = self.steps[max(self.steps)]
            if not newest.roots_issued or newest.job is not None or newest.queue:
                return
            # Overlap steps only to fill actors that would otherwise idle.
            free = sum(max(0, a.capacity - a.inflight) for a in actors)
            outstanding = sum(s.outstanding_samples for s in self.steps.values())
            if free <= 0 or outstanding >= free:
                return
        if self._base_version is None:
            self._base_version = self.policy_version
        index = self._next_step
        self._next_step += 1
        self.steps[index] = StepState(index, now, BudgetLedger(self.config.step_budget_turns))
        self.counters["steps_opened"] += 1

    # ------------------------------------------------------------------ planning

    def _advance_plan(self, step: StepState, now: float, units: float) -> tuple[list[Issue] | None, float]:
        """Plan ``step``'s next round with about ``units`` of work at most: the round (empty
        to close the step) once whole, else None, and the units left in this call."""
        if step.job is None:
            started = self._start_round(step, now)
            if not isinstance(started, (RootsJob, BranchesJob)):
                return started, units
            step.job = started
        job = step.job
        while units > 0:
            if isinstance(job, RootsJob):
                plan, units = self._advance_roots(step, job, units)
            else:
                plan, units = self._advance_branches(step, job, units)
            if plan is not None:
                step.job = None
                return plan, units
        return None, units

    def _starts_or_fits(self, cost: float, units: float) -> bool:
        """Whether a piece of planning that cannot be split runs now: when it fits in the
        units left, or first thing in a call (else it waits for the next call)."""
        return cost <= units or units >= self.config.plan_units_per_call

    def _start_round(self, step: StepState, now: float) -> list[Issue] | RootsJob | BranchesJob:
        """The next round of ``step``: TRACE's as a job planned in slices, the others whole."""
        kind = self.config.stage2_kind
        if kind == "search":
            return self._plan_search(step, now)
        if not step.roots_issued:
            step.roots_issued = True
            turns = step.budget.available
            if kind != "none":
                turns = int(self.config.root_fraction * self.config.step_budget_turns)
            return self._plan_roots(step, turns // self.config.max_turns)
        if kind == "none":
            # Stage-1-only strategies spend refunds on further root groups: equal cost.
            return self._plan_roots(step, step.budget.available // self.config.max_turns)
        if kind == "trace":
            return BranchesJob()
        candidates = self._branch_candidates(step)
        if kind == "tree-random":
            plan = self._plan_random_branches(candidates, step.budget.available)
        else:
            plan = self._plan_entropy_branches(candidates, step.budget.available)
        return [self._branch_issue(step, tree, state, k) for tree, state, k in plan]

    def _branch_issue(self, step: StepState, tree: RolloutTree, state: NodeState, samples: int) -> Issue:
        turns = self.config.max_turns - state.node.depth
        return functools.partial(self._issue_branch, step, tree, state, samples, turns)

    def _draw_pool(self, step: StepState, size: int) -> list[TaskSpec]:
        fresh = [t for t in self.task_pool if t.task_id not in step.tasks] if step.tasks else self.task_pool
        if not fresh:
            return []
        picks = self.rng.choice(len(fresh), size=min(size, len(fresh)), replace=False)
        return [fresh[i] for i in sorted(picks.tolist())]

    def _plan_roots(self, step: StepState, rollouts: int) -> list[Issue] | RootsJob:
        cfg = self.config
        groups = rollouts // cfg.group_size
        if rollouts < 2:
            return []
        stage1 = cfg.stage1
        if stage1 == "trace":
            return RootsJob(rollouts)
        if stage1 == "uniform":
            pool = self._draw_pool(step, max(1, groups))
            counts = [cfg.group_size] * len(pool) if groups else []
        else:
            pool = self._draw_pool(step, max(1, groups) * cfg.pool_factor)
            if stage1 == "gps":
                values = self._predict_roots(pool)
                embeddings = self._prompt_embeddings(pool)
                chosen = set(select_gps(values, embeddings, groups, cfg.gps_diversity))
                counts = [cfg.group_size if i in chosen else 0 for i in range(len(pool))]
            else:
                transition = dps_transition(cfg.dps_stickiness)
                mixed = [dps_predict(self.dps_belief.get(t.task_id, dps_prior()), transition)[1] for t in pool]
                chosen = set(select_dps(mixed, groups, self.rng))
                counts = [cfg.group_size if i in chosen else 0 for i in range(len(pool))]
        self.stage1_log.append((step.index, tuple(t.task_id for t in pool), tuple(counts)))
        return [self._root_issue(step, task, m) for task, m in zip(pool, counts) if m >= 1]

    def _root_issue(self, step: StepState, task: TaskSpec, samples: int) -> Issue:
        return functools.partial(self._issue_root, step, task, samples, self.config.max_turns)

    def _advance_roots(self, step: StepState, job: RootsJob, units: float) -> tuple[list[Issue] | None, float]:
        """One slice of TRACE stage 1 (draw, score, DP, trace back, wrap) within ``units``."""
        cfg = self.config
        if job.pool is None:
            cost = _UNITS_DRAW_PER_TASK * len(self.task_pool)
            if not self._starts_or_fits(cost, units):
                return None, 0.0
            groups = job.rollouts // cfg.group_size
            job.pool = self._draw_pool(step, max(1, groups) * cfg.pool_factor)
            return None, units - cost
        if job.dp is None and job.revision != self.predictor.revision:
            # Every score of a round comes from one model: a step closing mid-plan retrains it.
            job.revision, job.values = self.predictor.revision, []
        if len(job.values) < len(job.pool):
            batch: list[SparseFeatures] = []
            for task in job.pool[len(job.values) :]:
                if units <= 0:
                    break
                units -= _UNITS_SCORE if self._root_features_cached(task) else _UNITS_FEATURIZE
                batch.append(self._featurize_root(task))
            job.values.extend(self.predictor.predict_many(batch)[0].tolist())
            return None, units
        if job.dp is None:
            job.dp = RootsDP.start(job.values, job.rollouts, cfg.max_per_prompt)
        dp = job.dp
        if not dp.all_added:
            row_units = dp.cells_per_prompt / _DP_CELLS_PER_UNIT
            before = dp.added
            dp.add(max(1, int(units / row_units)))
            return None, units - (dp.added - before) * row_units
        if not dp.finished:
            before = dp.traced
            dp.trace(max(1, int(units / _UNITS_TRACE)))
            return None, units - (dp.traced - before) * _UNITS_TRACE
        if job.counts is None:
            job.counts = dp.allocation()
            self.stage1_log.append((step.index, tuple(t.task_id for t in job.pool), tuple(job.counts)))
        start, end = job.emitted, min(len(job.pool), job.emitted + max(1, int(units / _UNITS_EMIT)))
        for task, m in zip(job.pool[start:end], job.counts[start:end]):
            if m >= 1:
                job.plan.append(self._root_issue(step, task, m))
        job.emitted = end
        return (job.plan if end == len(job.pool) else None), units - _UNITS_EMIT * (end - start)

    def _root_features_cached(self, task: TaskSpec) -> bool:
        cached = self._root_feature_cache.get(task.task_id)
        return cached is not None and cached[0] == self.prompt_stats.get(task.task_id, PromptStats())

    def _predict_roots(self, pool: Sequence[TaskSpec]) -> list[float]:
        features = [self._featurize_root(t) for t in pool]
        probs, _ = self.predictor.predict_many(features)
        return probs.tolist()

    def _prompt_embeddings(self, pool: Sequence[TaskSpec]) -> np.ndarray:
        width = 1 << self.config.predictor.hash_bits
        out = np.zeros((len(pool), width))
        for i, task in enumerate(pool):
            f = self._featurize_root(task)
            text = f.indices < width
            out[i, f.indices[text]] = f.values[text]
        return out

    def _new_work_id(self, tree_id: str) -> str:
        self._work_seq += 1
        return f"{tree_id}.w{self._work_seq}"

    def _sampling(self) -> SamplingSpec:
        base = self.config.sampling
        return SamplingSpec(base.temperature, base.top_p, base.max_tokens_per_turn, int(self.rng.integers(0, 2**31 - 1)))

    @staticmethod
    def _register_work(step: StepState, tree: RolloutTree, record: WorkRecord) -> None:
        tree.add_work(record)
        step.outstanding_items += 1
        step.outstanding_samples += record.num_samples

    def _issue_root(self, step: StepState, task: TaskSpec, samples: int, max_turns: int, now: float) -> Issued | None:
        reserved = samples * max_turns
        if not step.budget.can_reserve(reserved):
            return None
        step.budget.reserve(reserved, samples)
        tree_id = tree_id_for(step.index, len(step.tree_ids), self.id_prefix)
        tree = RolloutTree(tree_id, task, step.index, now)
        self.trees[tree_id] = tree
        step.tree_ids.append(tree_id)
        step.tasks.add(task.task_id)
        self._root_features[tree_id] = self._featurize_root(task)
        item = WorkItem(
            run_id=self.run_id,
            work_id=self._new_work_id(tree_id),
            tree_id=tree_id,
            kind="root",
            task=task,
            num_samples=samples,
            parent_id=None,
            prefix_depth=0,
            prefix_token_ids=[],
            env_snapshot=b"",
            sampling=self._sampling(),
            max_turns=max_turns,
            min_policy_version=max(0, self.policy_version - self.config.staleness_eta),
            issued_at=now,
        )
        self._register_work(step, tree, WorkRecord(item.work_id, None, 0, samples, max_turns, reserved))
        return item, None

    def _issue_branch(
        self, step: StepState, tree: RolloutTree, state: NodeState, samples: int, max_turns: int, now: float
    ) -> Issued | None:
        reserved = samples * max_turns
        if not step.budget.can_reserve(reserved):
            return None
        step.budget.reserve(reserved, samples)
        node = state.node
        item = WorkItem(
            run_id=self.run_id,
            work_id=self._new_work_id(tree.tree_id),
            tree_id=tree.tree_id,
            kind="branch",
            task=tree.task,
            num_samples=samples,
            parent_id=node.node_id,
            prefix_depth=node.depth,
            prefix_token_ids=tree.prefix_token_ids(node.node_id),
            env_snapshot=node.env_snapshot,
            sampling=self._sampling(),
            max_turns=max_turns,
            min_policy_version=max(0, self.policy_version - self.config.staleness_eta),
            issued_at=now,
        )
        self._register_work(step, tree, WorkRecord(item.work_id, node.node_id, node.depth, samples, max_turns, reserved))
        self.counters["branches_issued"] += 1
        return item, node.actor_id

    # --- stage 2 -----------------------------------------------------------------------

    def _branchable(self, tree: RolloutTree, state: NodeState) -> bool:
        node = state.node
        if node.done or node.depth >= self.config.max_turns or state.leaves < 1:
            return False
        # Never branch from a prefix any of whose turns lags the learner by more than eta.
        return self.policy_version - state.oldest_version <= self.config.staleness_eta

    def _tree_candidates(self, tree: RolloutTree) -> list[NodeState]:
        out = []
        for state in tree.nodes.values():
            if self._branchable(tree, state):
                out.append(state)
            elif not state.node.done and state.leaves >= 1 and state.node.depth < self.config.max_turns:
                self.counters["branch_skipped_stale"] += 1
        return out

    def _branch_candidates(self, step: StepState) -> list[tuple[RolloutTree, NodeState]]:
        return [
            (tree, state)
            for tree in (self.trees.get(tree_id) for tree_id in step.tree_ids)
            if tree is not None
            for state in self._tree_candidates(tree)
        ]

    def _advance_branches(
        self, step: StepState, job: BranchesJob, units: float
    ) -> tuple[list[Issue] | None, float]:
        """One slice of a TRACE stage-2 round (scan, score, allocate, wrap) within ``units``.

        Candidates are the branchable prefixes whose leaves are unanimous; each gets at most
        branch_k continuations this round by the greedy on V_pref per turn.
        """
        cfg = self.config
        if job.trees_scanned < len(step.tree_ids):
            for tree_id in step.tree_ids[job.trees_scanned :]:
                if units <= 0:
                    break
                job.trees_scanned += 1
                tree = self.trees.get(tree_id)
                if tree is None:
                    continue
                units -= _UNITS_SCAN * len(tree.nodes)
                for state in self._tree_candidates(tree):
                    if state.successes in (0, state.leaves):
                        job.candidates.append((tree, state))
                        job.outcome.append(1.0 if state.successes == state.leaves else 0.0)
                        job.cost.append(cfg.max_turns - state.node.depth)
                        job.already.append(state.expansions)
            return None, units
        n = len(job.candidates)
        revision = self.predictor.revision
        if job.chosen is None and job.revision != revision:
            # As in _advance_roots; predictions cached on the nodes at this revision are kept.
            job.revision, job.scored, job.greedy = revision, 0, PrefixGreedy()
        if job.scored < n:
            start, end = job.scored, min(n, job.scored + max(1, int(units / _UNITS_SCORE)))
            states = [state for _, state in job.candidates[start:end]]
            stale = [state for state in states if state.prediction_revision != revision]
            if stale:
                probs, _ = self.predictor.predict_many([state.features for state in stale])
                for state, p in zip(stale, probs.tolist()):
                    state.prediction, state.prediction_revision = p, revision
            job.greedy.add(
                np.asarray(job.outcome[start:end], dtype=np.float64),
                np.fromiter((state.prediction for state in states), dtype=np.float64, count=len(states)),
                np.asarray(job.cost[start:end], dtype=np.int64),
                np.full(len(states), cfg.branch_k, dtype=np.int64),
                np.asarray(job.already[start:end], dtype=np.int64),
            )
            job.scored = end
            return None, units - _UNITS_SCORE * len(stale) - _UNITS_SCAN * len(states)
        if job.chosen is None:
            cost = _UNITS_ALLOCATE * n
            if not self._starts_or_fits(cost, units):
                return None, 0.0
            counts = job.greedy.allocate(step.budget.available)
            chosen = np.flatnonzero(counts)
            job.chosen, job.continuations = chosen.tolist(), counts[chosen].tolist()
            return None, units - cost
        start = len(job.plan)
        end = min(len(job.chosen), start + max(1, int(units / _UNITS_EMIT)))
        for i, k in zip(job.chosen[start:end], job.continuations[start:end]):
            tree, state = job.candidates[i]
            job.plan.append(self._branch_issue(step, tree, state, k))
        units -= _UNITS_EMIT * (end - start)
        return (job.plan if end == len(job.chosen) else None), units

    def _fill(self, ordered, budget: int):
        plan = []
        for tree, state in ordered:
            cost = self.config.max_turns - state.node.depth
            k = min(self.config.branch_k, budget // cost)
            if k < 1:
                continue
            plan.append((tree, state, k))
            budget -= k * cost
        return plan

    def _plan_random_branches(self, candidates, budget: int):
        fresh = [(t, s) for t, s in candidates if s.expansions == 0]
        order = self.rng.permutation(len(fresh))
        return self._fill([fresh[i] for i in order], budget)

    def _plan_entropy_branches(self, candidates, budget: int):
        rises = []
        for tree, state in candidates:
            if state.expansions:
                continue
            parent_id = state.node.parent_id
            if parent_id is None:
                siblings = [tree.nodes[i].node for i in tree.first_turns]
                reference = sum(turn_entropy(n) for n in siblings) / len(siblings)
            else:
                reference = turn_entropy(tree.nodes[parent_id].node)
            rise = turn_entropy(state.node) - reference
            if rise > self.config.entropy_rise:
                rises.append((rise, tree, state))
        rises.sort(key=lambda r: -r[0])
        return self._fill([(t, s) for _, t, s in rises], budget)

    # --- TSR search ----------------------------------------------------------------------

    def _plan_search(self, step: StepState, now: float) -> list[Issue]:
        cfg = self.config
        per_turn = 1 + (cfg.tsr_lookahead_turns if cfg.strategy == "tsr-lookahead" else 0)
        if not step.roots_issued:
            step.roots_issued = True
            worst_case = cfg.group_size * cfg.tsr_width * per_turn * cfg.max_turns
            prompts = max(1, cfg.step_budget_turns // worst_case)
            samples = cfg.tsr_width if cfg.strategy == "tsr-beam" else cfg.group_size * cfg.tsr_width

            def issue_search_root(task: TaskSpec, at: float) -> Issued | None:
                issued = self._issue_root(step, task, samples, min(per_turn, cfg.max_turns), at)
                if issued is not None:
                    item = issued[0]
                    step.search[item.tree_id] = [SearchChain(None, item.work_id) for _ in range(cfg.group_size)]
                return issued

            return [functools.partial(issue_search_root, task) for task in self._draw_pool(step, prompts)]
        items: list[Issue] = []
        planned = 0
        for tree_id, chains in step.search.items():
            tree = self.trees.get(tree_id)
            if tree is None:
                continue
            if cfg.strategy == "tsr-beam":
                self._advance_beam(tree, chains)
            else:
                self._advance_best_of_n(tree, chains)
            for chain in chains:
                if chain.finished or chain.frontier is None:
                    continue
                state = tree.nodes[chain.frontier]
                turns = min(per_turn, cfg.max_turns - state.node.depth)
                cost = cfg.tsr_width * turns
                if planned + cost > step.budget.available:
                    chain.finished = True
                    self.counters["search_chains_cut_by_budget"] += 1
                    continue
                planned += cost
                items.append(functools.partial(self._issue_search_step, step, tree, state, chain, turns))
        return items

    def _issue_search_step(
        self, step: StepState, tree: RolloutTree, state: NodeState, chain: SearchChain, turns: int, now: float
    ) -> Issued | None:
        issued = self._issue_branch(step, tree, state, self.config.tsr_width, turns, now)
        if issued is None:
            chain.finished = True
        else:
            chain.pending_work = issued[0].work_id
        return issued

    def _candidates_of(self, tree: RolloutTree, work_id: str) -> list[NodeState]:
        record = tree.work[work_id]
        depth = record.prefix_depth + 1
        return sorted(
            (s for s in tree.nodes.values() if s.node.work_id == work_id and s.node.depth == depth),
            key=lambda s: s.node.node_id,
        )

    def _search_score(self, tree: RolloutTree, state: NodeState) -> float:
        """env_score of the candidate; with lookahead, the best score among its own descendants."""
        best = state.node.env_score
        stack = list(state.children)
        while stack:
            child = tree.nodes[stack.pop()]
            best = max(best, child.node.env_score)
            stack.extend(child.children)
        return best

    def _advance_best_of_n(self, tree: RolloutTree, chains: list[SearchChain]) -> None:
        shared_root = [c for c in chains if c.frontier is None and not c.finished]
        if shared_root:
            # Round 0 sampled every chain's first candidates in one root item: split them.
            candidates = self._candidates_of(tree, shared_root[0].pending_work)
            width = self.config.tsr_width
            for j, chain in enumerate(shared_root):
                self._choose(tree, chain, candidates[j * width : (j + 1) * width])
            return
        for chain in chains:
            if not chain.finished and chain.pending_work is not None:
                self._choose(tree, chain, self._candidates_of(tree, chain.pending_work))

    def _choose(self, tree: RolloutTree, chain: SearchChain, candidates: list[NodeState]) -> None:
        chain.pending_work = None
        if not candidates:
            chain.finished = True
            return
        best = max(candidates, key=lambda s: (self._search_score(tree, s), s.node.node_id))
        chain.frontier = best.node.node_id
        if best.node.done or best.node.depth >= self.config.max_turns:
            chain.finished = True

    def _advance_beam(self, tree: RolloutTree, chains: list[SearchChain]) -> None:
        pending = {c.pending_work for c in chains if c.pending_work is not None and not c.finished}
        candidates = [s for w in sorted(pending) for s in self._candidates_of(tree, w)]
        candidates.sort(key=lambda s: (-self._search_score(tree, s), s.node.node_id))
        open_chains = [c for c in chains if not c.finished]
        for chain in open_chains:
            chain.pending_work = None
            if not candidates:
                chain.finished = True
                continue
            best = candidates.pop(0)
            chain.frontier = best.node.node_id
            if best.node.done or best.node.depth >= self.config.max_turns:
                chain.finished = True

    # ------------------------------------------------------------------ closing

    def _close_step(self, step: StepState, now: float, forced: bool) -> None:
        samples: list[SparseFeatures] = []
        targets: list[float] = []
        weights: list[float] = []
        emitted: list[CompletedTree] = []
        for tree_id in step.tree_ids:
            tree = self.trees.pop(tree_id, None)
            if tree is None:
                continue
            self.emitted.add(tree_id)
            self.counters["orphans_dropped"] += len(tree.orphan_ids)
            self._drop("orphan_at_close", tree_id, sorted(tree.orphan_ids))
            status = "partial" if tree.outstanding_work else "complete"
            completed, left_out = tree.to_completed(run_id=self.run_id, strategy=self.config.strategy, status=status, now=now)
            self.counters["nodes_left_out"] += left_out
            if left_out:
                kept = {n.node_id for n in completed.nodes} if completed is not None else set()
                self._drop("left_out", tree_id, [i for i in tree.nodes if i not in kept])
            if completed is None:
                self.counters["trees_dropped"] += 1
                self._root_features.pop(tree_id, None)
                continue
            self.counters[f"trees_{status}"] += 1
            emitted.append(completed)
            self._account_tree(tree)
            self._learn_from_tree(tree, samples, targets, weights)
        # The learner trains one allocator step per update, so it must know when a step is whole.
        self._completed.extend(dataclasses.replace(tree, step_tree_count=len(emitted)) for tree in emitted)
        self._evaluate_then_train(samples, targets, weights)
        self._closed_budget["turns"] += step.budget.used_turns
        self._closed_budget["tokens"] += step.budget.used_tokens
        self._closed_budget["committed"] += step.budget.committed
        self._closed_budget["overspent"] += step.budget.overspent_turns
        del self.steps[step.index]
        self.counters["steps_closed_forced" if forced else "steps_closed"] += 1
        log.info(
            "allocator_step_closed",
            step=step.index,
            trees=len(step.tree_ids),
            turns=step.budget.used_turns,
            budget=step.budget.total_turns,
            forced=forced,
        )

    def _account_tree(self, tree: RolloutTree) -> None:
        self.counters["groups"] += 1
        if tree.leaves and tree.mixed:
            self.counters["groups_mixed"] += 1
        root_value = tree.successes / tree.leaves if tree.leaves else 0.0
        for state in tree.nodes.values():
            if state.leaves < 1:
                continue
            tokens = len(state.node.action_token_ids)
            self._trained_tokens += tokens
            # Flat GRPO: a node's advantage is its subtree's mean outcome minus the group's.
            if abs(state.successes / state.leaves - root_value) > 1e-12:
                self._informative_tokens += tokens

    def _learn_from_tree(self, tree: RolloutTree, samples: list, targets: list, weights: list) -> None:
        cfg = self.config
        if tree.leaves:
            samples.append(self._root_features.pop(tree.tree_id, None) or self._featurize_root(tree.task))
            targets.append(tree.successes / tree.leaves)
            weights.append(1.0)
            self._evaluation["beta"].append(self.beta.predict(tree.task.task_id))
        for state in tree.nodes.values():
            if state.leaves < 1 or state.features is None:
                continue
            weight = self.predictor.sample_weight(self.policy_version - state.node.policy_version)
            if weight <= 0:
                self.counters["predictor_samples_too_stale"] += 1
                continue
            samples.append(state.features)
            targets.append(state.successes / state.leaves)
            weights.append(weight)
            self._evaluation["beta"].append(self.beta.predict(tree.task.task_id))
        successes, failures = tree.successes, tree.leaves - tree.successes
        task_id = tree.task.task_id
        old = self.prompt_stats.get(task_id, PromptStats())
        decay = cfg.prompt_stats_decay
        self.prompt_stats[task_id] = PromptStats(old.successes * decay + successes, old.failures * decay + failures)
        self.beta.observe(task_id, successes, failures)
        if tree.leaves:
            belief = self.dps_belief.get(task_id, dps_prior())
            self.dps_belief[task_id] = dps_update(
                belief,
                dps_transition(cfg.dps_stickiness),
                dps_emission(tree.leaves),
                dps_category(successes, tree.leaves),
            )

    def _evaluate_then_train(self, samples: list, targets: list, weights: list) -> None:
        if not samples:
            return
        # Prequential: every sample is scored before the model has seen it.
        probs, _ = self.predictor.predict_many(samples)
        self._evaluation["p"].extend(probs.tolist())
        self._evaluation["target"].extend(targets)
        self.predictor.update(samples, targets, weights)

    # ------------------------------------------------------------------ features

    def _prompt_counts(self, task: TaskSpec) -> dict[int, float]:
        counts = self._prompt_count_cache.get(task.task_id)
        if counts is None:
            counts = text_counts("p", self.prompt_text(task), self.config.predictor)
            self._prompt_count_cache[task.task_id] = counts
        return counts

    def _featurize_root(self, task: TaskSpec) -> SparseFeatures:
        stats = self.prompt_stats.get(task.task_id, PromptStats())
        cached = self._root_feature_cache.get(task.task_id)
        if cached is not None and cached[0] == stats:
            return cached[1]
        features = features_from_counts(
            self._prompt_counts(task),
            depth=0,
            max_turns=self.config.max_turns,
            tool_calls=0,
            last_observation="",
            prompt_stats=stats,
            config=self.config.predictor,
        )
        self._root_feature_cache[task.task_id] = (stats, features)
        return features

    def _featurize_node(self, tree: RolloutTree, state: NodeState) -> SparseFeatures:
        """Built from the parent's cached counts plus this turn, so each node costs one turn."""
        node = state.node
        parent = tree.nodes[node.parent_id] if node.parent_id is not None else None
        base = parent.text_counts if parent is not None else self._prompt_counts(tree.task)
        state.text_counts = merge_counts(base, turn_counts(node.action_text, node.observation_text, self.config.predictor))
        state.tool_calls = (parent.tool_calls if parent is not None else 0) + int(bool(node.observation_text.strip()))
        return features_from_counts(
            state.text_counts,
            depth=node.depth,
            max_turns=self.config.max_turns,
            tool_calls=state.tool_calls,
            last_observation=node.observation_text,
            prompt_stats=self.prompt_stats.get(tree.task.task_id, PromptStats()),
            config=self.config.predictor,
        )

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> dict[str, float | int]:
        c = self.counters
        groups = c["groups"]
        turns = self._closed_budget["turns"]
        p = self._evaluation["p"]
        y = self._evaluation["target"]
        hits, misses = c["affinity_hits"], c["affinity_misses"]
        out: dict[str, float | int] = dict(c)
        out.update(
            effective_ratio=(c["groups_mixed"] / groups) if groups else 0.0,
            mixed_groups_per_100_turns=(100.0 * c["groups_mixed"] / turns) if turns else 0.0,
            informative_token_fraction=(self._informative_tokens / self._trained_tokens) if self._trained_tokens else 0.0,
            budget_turns_used=turns,
            budget_tokens_used=self._closed_budget["tokens"],
            budget_overspent_turns=self._closed_budget["overspent"],
            affinity_hit_rate=(hits / (hits + misses)) if hits + misses else 0.0,
            predictor_brier=float(np.mean((np.asarray(p) - np.asarray(y)) ** 2)) if p else math.nan,
            predictor_auc=auc_score(list(p), [int(t >= 0.5) for t in y]) if p else math.nan,
            predictor_calibration_error=calibration_error(p, y) if p else math.nan,
            beta_baseline_brier=float(np.mean((np.asarray(self._evaluation["beta"]) - np.asarray(y)) ** 2)) if p else math.nan,
            open_steps=len(self.steps),
            open_trees=len(self.trees),
            open_nodes=sum(len(t.nodes) for t in self.trees.values()),
            policy_version=self.policy_version,
        )
        return out
