"""AllocatorCore: the allocator as one synchronous state machine with no I/O.

The NATS shell (allocator/service.py) owns the clock, the bus and the actor registry. It
feeds every TurnNode to ``on_node``, the learner's version to ``on_policy_version``, asks
``schedule`` for routed work and ``pop_completed`` for trees to publish. Everything here is
deterministic given the config, the task pool, the seed and that call sequence.

Step life cycle (one allocator step = one batch for the learner):
  1. open: the step gets its turn budget; its strategy's first round issues root work
     (kind "root").
  2. rounds: whenever the step has no outstanding work, the strategy's planner
     (allocator/strategies/) plans the next round (stage-2 branches, the next search turn,
     or more root groups for stage-1-only strategies) within the remaining budget. An
     empty plan closes the step. A planner may return a job that plans the round a slice
     per ``schedule`` call (TRACE does), so that no call takes long however many nodes are
     open; ``busy`` tells the shell to call again soon.
  3. close: every tree of the step becomes a CompletedTree ("complete", or "partial" when
     the step timed out with work outstanding); the outcome model (allocator/learning.py)
     learns from it. Steps overlap: step s+1 may open while s is in its last rounds, as
     long as the allocator is at most ``staleness_eta`` versions ahead of the learner.

Rebuilding after a restart replays the durable streams into a fresh core: see
allocator/replay.py.

Every node the core will not pass on (late, unknown tree, expired or left-over orphan, not
on a complete path) is listed by ``pop_dropped``, so that the shell can record it by id.
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from msgspec import Meta

from protocol import CompletedTree, SamplingSpec, TaskSpec, TurnNode, WorkItem, replace
from tracerl.config import AtLeast0, AtLeast1, Config, Fraction, Positive
from tracerl.logs import get_logger

from .allocation import RootObjective
from .budget import BudgetLedger
from .learning import OutcomeModel, Totals, TrainingBatch, allocator_metrics, default_prompt_text
from .predictor import PredictorConfig
from .replay import CrashReplay, ReplayState
from .selection import paired_draw
from .shard import ShardConfig
from .step import Issue, Issued, StepState, step_of_tree, tree_id_for, work_id_for
from .strategies import STAGE2, STRATEGIES, planner_for, turn_entropy
from .tree import NodeState, RolloutTree, WorkRecord, at_horizon

log = get_logger(__name__)

STAGE2_CHOICES = tuple(STAGE2)
STAGE1_LOG_STEPS = 256

# Why a received node will never reach the learner; see ``AllocatorCore.pop_dropped``.
DropReason = Literal["late", "unknown_tree", "orphan_expired", "orphan_at_close", "left_out"]

NodeOutcome = Literal["accepted", "duplicate", "unknown_tree", "buffered_orphan", "late"]


class AllocatorCoreConfig(Config, frozen=True):
    # A name in allocator.strategies.STRATEGIES.
    strategy: str = "trace"
    # Stage 2 paired with the gps or dps prompt selectors; ignored by the other strategies.
    stage2: str = "none"
    # Prompts per uniform batch and rollouts per prompt (GRPO's group size).
    batch_prompts: AtLeast1 = 16
    # One rollout is never mixed.
    group_size: Annotated[int, Meta(ge=2)] = 4
    # Candidate pool = pool_factor x the prompts a uniform batch would take.
    pool_factor: AtLeast1 = 4
    step_budget_turns: int = 256
    # Share of the step budget that stage 1 may reserve when a stage 2 follows.
    root_fraction: Fraction = 0.75
    max_turns: AtLeast1 = 4
    max_per_prompt: Annotated[int, Meta(ge=2)] = 8
    # The smallest root group TRACE's stage 1 makes (2: any group that can be mixed).
    min_per_prompt: int = 2
    # What TRACE's stage 1 maximises: "mixed_groups" (the paper's sum of V_root) or
    # "informative_rollouts" (rollouts with a non-zero advantage; allocation.root_gain_table).
    root_objective: RootObjective = "mixed_groups"
    # Most continuations from one prefix in one stage-2 round.
    branch_k: AtLeast1 = 2
    staleness_eta: AtLeast0 = 2
    max_open_steps: AtLeast1 = 2
    orphan_timeout_s: Positive = 60.0
    step_timeout_s: Positive = 900.0
    # Exponential forgetting of per-prompt outcome counts at every observation.
    prompt_stats_decay: Fraction = 0.8
    entropy_rise: float = 0.0
    gps_diversity: float = 0.2
    dps_stickiness: Annotated[float, Meta(ge=0, le=1)] = 0.8
    tsr_width: AtLeast1 = 4
    tsr_lookahead_turns: AtLeast0 = 1
    # Bounds the work one schedule() call builds, so a large round is spread over calls.
    # With plan_units_per_call it keeps a call to about a millisecond on a small core
    # (bench/allocator_latency.py), so the shell's event loop is never held for long.
    max_items_per_call: AtLeast1 = 32
    # Bounds the planning one schedule() call does, in units of about a microsecond (see
    # allocator/strategies/base.py), so planning a round over 10^4 open nodes is spread
    # over calls too.
    plan_units_per_call: AtLeast1 = 300
    # How many of a closed step's trees the predictor learns from per schedule() call; 0
    # learns from all of them in the call that closes the step. Learning costs milliseconds
    # a tree, so with hundreds of prompts a step that one call holds the shell for a second
    # (bench/scale.py); a bound spreads it over the following calls, which then plan with
    # the predictor as it was before those trees.
    learn_trees_per_call: AtLeast0 = 0
    sampling: SamplingSpec = SamplingSpec()
    predictor: PredictorConfig = PredictorConfig()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"allocator.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if self.stage2 not in STAGE2_CHOICES:
            raise ValueError(f"allocator.stage2 must be one of {', '.join(STAGE2_CHOICES)}; got {self.stage2!r}")
        if not 2 <= self.min_per_prompt <= self.max_per_prompt:
            raise ValueError("allocator.min_per_prompt must be in [2, max_per_prompt]")
        if self.step_budget_turns < 2 * self.max_turns:
            raise ValueError("allocator.step_budget_turns must cover at least two full rollouts")


@dataclass
class PendingLearning:
    """A closed step's trees the predictor is still to learn from, and the batch they make."""

    policy_version: int
    trees: deque[RolloutTree] = field(default_factory=deque)
    batch: TrainingBatch = field(default_factory=TrainingBatch)


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


class AllocatorCore(CrashReplay):
    """One allocator: the lifecycle of its steps (budget, scheduling, routing, closing).
    Its strategy's ``planner`` plans the rounds, its ``outcomes`` model predicts and learns,
    and ``CrashReplay`` rebuilds it after a restart."""

    def __init__(
        self,
        config: AllocatorCoreConfig,
        task_pool: Sequence[TaskSpec],
        seed: int,
        *,
        run_id: str = "default",
        prompt_text: Callable[[TaskSpec], str] = default_prompt_text,
        id_prefix: str = "",
        shard: ShardConfig | None = None,
    ) -> None:
        """``id_prefix`` starts every tree id (and so every work and node id); give each
        allocator incarnation that does not replay its predecessor's streams a new one, so
        ids never collide with an earlier run's in JetStream's duplicate window.
        ``shard`` is the allocator shard this core is (``allocator.shard``): its work items
        and trees name it, and its tree ids start with its own prefix, so ids never collide
        across shards. Partitioning the pool and the step is the caller's (``shard_pool``,
        ``shard_step``)."""
        if not task_pool:
            raise ValueError("the task pool is empty")
        self.config = config
        self.task_pool = list(task_pool)
        self.run_id = run_id
        self.shard = shard or ShardConfig()
        self.id_prefix = self.shard.tree_prefix + id_prefix
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.planner = planner_for(config)
        self.outcomes = OutcomeModel(
            config.predictor,
            max_turns=config.max_turns,
            prompt_stats_decay=config.prompt_stats_decay,
            dps_stickiness=config.dps_stickiness,
            prompt_text=prompt_text,
        )
        self.outcomes.prepare_prompts(self.task_pool)
        self.policy_version = 0
        self._base_version: int | None = None
        self._next_step = 0
        self._work_seq = 0
        self.trees: dict[str, RolloutTree] = {}
        self.steps: dict[int, StepState] = {}
        self.emitted: set[str] = set()
        self._completed: list[CompletedTree] = []
        self._trees_with_orphans: set[str] = set()
        self._replay = ReplayState()
        # Every node this core decided not to pass on, by id: (reason, tree id, node id).
        self._dropped: list[tuple[DropReason, str, str]] = []
        self.counters: Counter[str] = Counter()
        self.totals = Totals()
        # Recent stage-1 decisions (step, candidate task ids, rollouts each) for diagnostics. A
        # short window: an entry holds a whole candidate pool, and 4096 of them took hours to fill.
        # Closed steps' trees the predictor has not learned from yet (``learn_trees_per_call``).
        self._learning: deque[PendingLearning] = deque()
        self.stage1_log: deque[tuple[int, tuple[str, ...], tuple[int, ...]]] = deque(maxlen=STAGE1_LOG_STEPS)

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
            self.outcomes.observe_node(tree, state)
            record = tree.work.get(current.work_id)
            if record is None:
                self.counters["nodes_without_work"] += 1
                continue
            if step is not None:
                step.budget.record_turn(len(current.action_token_ids))
            # A rebuilt item learns its chains during replay; it settles in finish_replay.
            if record.finished and not record.settled and not (self._replay.active and record.synthesized):
                if step is not None:
                    self._settle(step, record)
                else:
                    record.settled = True
        return outcome

    def _settle(self, step: StepState, record: WorkRecord) -> None:
        record.settled = True
        # Where the budget went, for the decomposition of what each stage buys.
        where = "turns_roots" if record.prefix_depth == 0 else f"turns_branches_depth{record.prefix_depth}"
        self.counters[where] += record.turns_used
        step.budget.settle(record.reserved_turns, record.turns_used)
        step.outstanding_items -= 1
        step.outstanding_samples -= record.num_samples

    # ------------------------------------------------------------------ scheduling

    def schedule(self, now: float, actors: Sequence[ActorLoad]) -> list[RoutedWork]:
        """Work to send now. Cheap when nothing changed: planning runs only for steps whose
        previous round has fully come back, and at most ``plan_units_per_call`` of it per
        call (see ``busy``)."""
        self._expire(now)
        if self._learning:
            self.learn_closed_trees(self.config.learn_trees_per_call or None)
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
    def next_step_index(self) -> int:
        """The index the next step opens with: the steps opened in this run, counted across
        restarts (the replay restores it from the streams), unlike the counter ``steps_opened``."""
        return self._next_step

    @property
    def busy(self) -> bool:
        """A round is part-planned or planned work waits: the shell should call ``schedule``
        again right away (after serving its other tasks) instead of a tick later."""
        return bool(self._learning) or any(step.job is not None or step.queue for step in self.steps.values())

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
        self._new_step(index, now)
        self.counters["steps_opened"] += 1

    def _new_step(self, index: int, now: float) -> StepState:
        step = StepState(index, now, BudgetLedger(self.config.step_budget_turns))
        self.steps[index] = step
        return step

    # ------------------------------------------------------------------ planning

    def _advance_plan(self, step: StepState, now: float, units: float) -> tuple[list[Issue] | None, float]:
        """Plan ``step``'s next round with about ``units`` of work at most: the round (empty
        to close the step) once whole, else None, and the units left in this call."""
        if step.job is None:
            started = self.planner.start_round(self, step, now)
            if isinstance(started, list):
                return started, units
            step.job = started
        job = step.job
        while units > 0:
            plan, units = job.advance(self, step, units)
            if plan is not None:
                step.job = None
                return plan, units
        return None, units

    # ------------------------------------------------------------------ what planners use

    def draw_pool(self, step: StepState, size: int) -> list[TaskSpec]:
        """Up to ``size`` prompts of the task pool not yet in ``step``, drawn at random."""
        fresh = [t for t in self.task_pool if t.task_id not in step.tasks] if step.tasks else self.task_pool
        if not fresh:
            return []
        step.draws += 1
        return [fresh[i] for i in paired_draw(self.seed, step.index, step.draws - 1, len(fresh), size)]

    def root_item(self, step: StepState, task: TaskSpec, samples: int) -> Issue:
        """A planned root item: ``samples`` rollouts of ``task`` to the turn horizon."""
        return functools.partial(self.issue_root, step, task, samples, self.config.max_turns)

    def branch_item(self, step: StepState, tree: RolloutTree, state: NodeState, samples: int) -> Issue:
        """A planned branch item: ``samples`` continuations of a prefix to the turn horizon."""
        turns = self.config.max_turns - state.node.depth
        return functools.partial(self.issue_branch, step, tree, state, samples, turns)

    def tree_candidates(self, tree: RolloutTree) -> list[NodeState]:
        """The prefixes of ``tree`` a branch may start from."""
        out = []
        for state in tree.nodes.values():
            if self._branchable(tree, state):
                out.append(state)
            elif not state.node.done and state.leaves >= 1 and state.node.depth < self.config.max_turns:
                self.counters["branch_skipped_stale"] += 1
        return out

    def branch_candidates(self, step: StepState) -> list[tuple[RolloutTree, NodeState]]:
        return [
            (tree, state)
            for tree in (self.trees.get(tree_id) for tree_id in step.tree_ids)
            if tree is not None
            for state in self.tree_candidates(tree)
        ]

    def _branchable(self, tree: RolloutTree, state: NodeState) -> bool:
        node = state.node
        if node.done or node.depth >= self.config.max_turns or state.leaves < 1:
            return False
        # Never branch from a prefix any of whose turns lags the learner by more than eta.
        return self.policy_version - state.oldest_version <= self.config.staleness_eta

    # ------------------------------------------------------------------ issuing

    def _new_work_id(self, tree_id: str) -> str:
        self._work_seq += 1
        return work_id_for(tree_id, self._work_seq)

    def _sampling(self) -> SamplingSpec:
        base = self.config.sampling
        return SamplingSpec(
            base.temperature, base.top_p, base.max_tokens_per_turn, int(self.rng.integers(0, 2**31 - 1))
        )

    @staticmethod
    def _register_work(step: StepState, tree: RolloutTree, record: WorkRecord) -> None:
        tree.add_work(record)
        step.outstanding_items += 1
        step.outstanding_samples += record.num_samples

    def issue_root(self, step: StepState, task: TaskSpec, samples: int, max_turns: int, now: float) -> Issued | None:
        reserved = samples * max_turns
        if not step.budget.can_reserve(reserved):
            return None
        step.budget.reserve(reserved, samples)
        tree_id = tree_id_for(step.index, len(step.tree_ids), self.id_prefix)
        tree = RolloutTree(tree_id, task, step.index, now)
        self.trees[tree_id] = tree
        step.tree_ids.append(tree_id)
        step.tasks.add(task.task_id)
        self.outcomes.open_tree(tree_id, task)
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
            shard=self.shard.index,
        )
        self._register_work(step, tree, WorkRecord(item.work_id, None, 0, samples, max_turns, reserved))
        self.outcomes.record_decision(tree, item.work_id, None)
        return item, None

    def issue_branch(
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
            shard=self.shard.index,
        )
        self._register_work(
            step, tree, WorkRecord(item.work_id, node.node_id, node.depth, samples, max_turns, reserved)
        )
        self.outcomes.record_decision(tree, item.work_id, state)
        self.counters["branches_issued"] += 1
        return item, node.actor_id

    # ------------------------------------------------------------------ closing

    def _close_step(self, step: StepState, now: float, forced: bool) -> None:
        learning = PendingLearning(self.policy_version)
        emitted: list[CompletedTree] = []
        for tree_id in step.tree_ids:
            tree = self.trees.pop(tree_id, None)
            if tree is None:
                continue
            self.emitted.add(tree_id)
            self.counters["orphans_dropped"] += len(tree.orphan_ids)
            self._drop("orphan_at_close", tree_id, sorted(tree.orphan_ids))
            status = "partial" if tree.outstanding_work else "complete"
            completed, left_out = tree.to_completed(
                run_id=self.run_id, strategy=self.config.strategy, status=status, now=now
            )
            self.counters["nodes_left_out"] += left_out
            if left_out:
                kept = {n.node_id for n in completed.nodes} if completed is not None else set()
                self._drop("left_out", tree_id, [i for i in tree.nodes if i not in kept])
            if completed is None:
                self.counters["trees_dropped"] += 1
                self.outcomes.drop_tree(tree_id)
                continue
            self.counters[f"trees_{status}"] += 1
            emitted.append(completed)
            self.counters["groups"] += 1
            if tree.leaves and tree.mixed:
                self.counters["groups_mixed"] += 1
            self.counters["branch_groups_mixed"] += tree.mixed_branch_groups
            self.totals.add_tree(tree)
            learning.trees.append(tree)
        # The learner trains one allocator step per update, so it must know when a step is whole.
        self._completed.extend(
            replace(tree, step_tree_count=len(emitted), shard=self.shard.index, shard_count=self.shard.count)
            for tree in emitted
        )
        if not emitted and self._base_version is not None:
            # The learner gets nothing of this step, so no version comes of it: later steps
            # expect one version fewer. Otherwise steps that time out empty (every node late,
            # e.g. engines still starting) hold every new step for versions that never come,
            # while the learner waits for trees that never come.
            self._base_version -= 1
            self.counters["steps_closed_empty"] += 1
        self._learning.append(learning)
        spread = self.config.learn_trees_per_call and not self._replay.active
        if not spread:  # a replay rebuilds the predictor as it was, whatever the calls to come
            self.learn_closed_trees(None)
        self.totals.add_step(step.budget)
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

    def learn_closed_trees(self, limit: int | None) -> None:
        """Teach the predictor from closed trees, oldest step first, at most ``limit`` trees
        (None: all); a step's batch trains the shared model once its last tree is learned."""
        while self._learning and (limit is None or limit > 0):
            pending = self._learning[0]
            while pending.trees and (limit is None or limit > 0):
                tree = pending.trees.popleft()
                too_stale = self.outcomes.learn_from_tree(tree, pending.batch, pending.policy_version)
                if too_stale:
                    self.counters["predictor_samples_too_stale"] += too_stale
                if limit is not None:
                    limit -= 1
            if pending.trees:
                return
            self.outcomes.evaluate_then_train(pending.batch)
            self._learning.popleft()

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> dict[str, float | int]:
        return allocator_metrics(
            self.counters,
            self.totals,
            self.outcomes.scores(),
            open_steps=len(self.steps),
            open_trees=len(self.trees),
            open_nodes=sum(len(t.nodes) for t in self.trees.values()),
            policy_version=self.policy_version,
        )


__all__ = [
    "STAGE2_CHOICES",
    "STRATEGIES",
    "ActorLoad",
    "AllocatorCore",
    "AllocatorCoreConfig",
    "DropReason",
    "NodeOutcome",
    "RoutedWork",
    "default_prompt_text",
    "step_of_tree",
    "tree_id_for",
    "turn_entropy",
]
