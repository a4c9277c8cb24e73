"""What the allocator learns from finished trees, and the metrics it reports.

``OutcomeModel`` is the one place that knows how outcomes are predicted: the shared
success predictor over prompt and prefix features (allocator/predictor.py), the per-prompt
statistics (decayed outcome counts, the Beta baseline, DPS's belief over {all-fail, mixed,
all-pass}), and the prequential scores of the predictor. The core feeds it trees and nodes;
strategies ask it for predictions. Replacing the predictor means changing this module and
allocator/predictor.py: the rest of the allocator sees predicted probabilities, a model
revision and an opaque ``NodeState.features`` slot.

``allocator_metrics`` turns the core's counters, the totals of closed steps and the
predictor's scores into the metrics the shell publishes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from protocol import TaskSpec

from .budget import BudgetLedger
from .evaluation import DecisionRecord, DecisionScores, NodeEvidence, Window, leave_one_out
from .posterior import ConcentrationFit, Decision, posterior_mean, shifted_prior
from .predictor import (
    BetaBaseline,
    PredictorConfig,
    PromptStats,
    SharedPredictor,
    SparseFeatures,
    calibration_error,
    features_from_counts,
    merge_counts,
    text_counts,
    turn_counts,
    word_count,
)
from .predictor import auc as auc_score
from .selection import dps_category, dps_emission, dps_predict, dps_prior, dps_transition, dps_update
from .tree import NodeState, RolloutTree


def default_prompt_text(task: TaskSpec) -> str:
    """Text the predictor sees for a prompt when the shell gives no better function."""
    for key in ("question", "prompt", "text"):
        value = task.params.get(key)
        if isinstance(value, str):
            return value
    return " ".join(str(v) for v in task.params.values() if isinstance(v, (str, int, float)))


class PrefixFeatures(NamedTuple):
    """What the model keeps on a node (``NodeState.features``) for the prefix ending there."""

    sparse: SparseFeatures
    # Hashed text counts of the prefix, so a child's features cost one turn.
    text_counts: dict[int, float]
    # Turns with a non-empty observation (tool calls) along the path.
    tool_calls: int


@dataclass
class TrainingBatch:
    """The samples one closed step teaches the predictor: features, backup targets, weights."""

    samples: list[SparseFeatures] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


class OutcomeModel:
    """Predicted success of prompts and prefixes: the shared model's prior, sharpened by the
    outcomes already seen (allocator/posterior.py), and scored at every decision it steers.

    Root of prompt p: the posterior mean of its success rate, with the shared model's root
    prediction μ_p as prior mean and the prompt's decayed outcome counts as evidence.
    Prefix H: the shared model's prediction for H moved by the prompt's correction (from
    the prompt's counts and the tree's leaves outside H) is the prior mean; the leaves
    already below H are the evidence. The concentrations are fitted per depth on what the
    issued continuations produced.
    """

    # What predictions cost in planning units (see strategies/base.py): a prompt's features
    # built from scratch (cached afterwards), and a prompt or prefix through the batched model.
    FEATURIZE_UNITS = 50
    PREDICT_UNITS = 4.5
    # Prequential scores are kept over a sliding window of the most recent samples.
    EVALUATION_WINDOW = 20_000

    def __init__(
        self,
        config: PredictorConfig,
        *,
        max_turns: int,
        prompt_stats_decay: float,
        dps_stickiness: float,
        prompt_text: Callable[[TaskSpec], str] = default_prompt_text,
    ) -> None:
        self.config = config
        self.max_turns = max_turns
        self.prompt_stats_decay = prompt_stats_decay
        self.dps_stickiness = dps_stickiness
        self.prompt_text = prompt_text
        self.predictor = SharedPredictor(config)
        self.beta = BetaBaseline()
        self.prompt_stats: dict[str, PromptStats] = {}
        self.dps_belief: dict[str, np.ndarray] = {}
        self.concentrations = ConcentrationFit(max_depth=max_turns, initial=config.initial_concentration)
        # What was believed when each open tree's work was issued, by tree and work id.
        self._decisions: dict[str, dict[str, DecisionRecord]] = {}
        self.decision_scores = DecisionScores(window=self.EVALUATION_WINDOW, max_depth=max_turns)
        self.loo_scores = DecisionScores(window=self.EVALUATION_WINDOW, max_depth=max_turns)
        # Mean turns a continuation issued at each depth took (a root rollout at depth 0).
        self._turns_taken: dict[int, tuple[float, float]] = {}
        # Root features of each open tree, taken when it was issued: what it is trained on.
        self._root_features: dict[str, SparseFeatures] = {}
        self._prompt_count_cache: dict[str, dict[int, float]] = {}
        self._prompt_word_cache: dict[str, int] = {}
        self._root_feature_cache: dict[str, SparseFeatures] = {}
        # The shared model's root prediction of a prompt and the revision it was made at.
        self._shared_root: dict[str, tuple[int, float]] = {}
        # The shared model's own prequential scores (no evidence): how much the text knows.
        self._evaluation = Window(self.EVALUATION_WINDOW, p=np.float64, target=np.float64)

    @property
    def revision(self) -> int:
        """Changes whenever the model is retrained: predictions of two revisions never mix."""
        return self.predictor.revision

    # ------------------------------------------------------------------ trees and nodes

    def prepare_prompts(self, tasks: Sequence[TaskSpec]) -> None:
        """Build the root features of every prompt in ``tasks`` now.

        They are kept per prompt once built, so their memory is bounded by the pool either
        way; built at start, it does not climb for the hour or more a run takes to draw most
        of a pool of thousands of prompts, which a soak could not tell from a leak.
        """
        for task in tasks:
            self._featurize_root(task)

    def open_tree(self, tree_id: str, task: TaskSpec) -> None:
        self._root_features[tree_id] = self._featurize_root(task)
        self._decisions.setdefault(tree_id, {})

    def drop_tree(self, tree_id: str) -> None:
        """Forget a tree that closed without a complete path (it teaches nothing)."""
        self._root_features.pop(tree_id, None)
        self._decisions.pop(tree_id, None)

    def observe_node(self, tree: RolloutTree, state: NodeState) -> None:
        """Set the features of a node just attached to ``tree`` (its parent already has them)."""
        state.features = self._featurize_node(tree, state)

    # ------------------------------------------------------------------ predictions

    def _shared_roots(self, tasks: Sequence[TaskSpec]) -> list[float]:
        revision = self.revision
        stale = [t for t in tasks if self._shared_root.get(t.task_id, (-1, 0.0))[0] != revision]
        if stale:
            probs, _ = self.predictor.predict_many([self._featurize_root(t) for t in stale])
            for task, p in zip(stale, probs.tolist(), strict=True):
                self._shared_root[task.task_id] = (revision, p)
        return [self._shared_root[t.task_id][1] for t in tasks]

    def _root_evidence(self, task_id: str) -> tuple[float, float]:
        stats = self.prompt_stats.get(task_id, PromptStats())
        return stats.successes, stats.failures

    def _root_value(self, task_id: str, shared: float) -> float:
        successes, failures = self._root_evidence(task_id)
        return posterior_mean(shared, successes, failures, self.concentrations.concentration(0))

    def score_roots(self, tasks: Sequence[TaskSpec], units: float) -> tuple[list[float], float]:
        """Predicted success of the leading ``tasks`` that ``units`` pay for (at least one),
        and the units left."""
        taken: list[TaskSpec] = []
        for task in tasks:
            if units <= 0:
                break
            units -= self.PREDICT_UNITS if task.task_id in self._root_feature_cache else self.FEATURIZE_UNITS
            taken.append(task)
        return self.predict_roots(taken), units

    def predict_roots(self, tasks: Sequence[TaskSpec]) -> list[float]:
        shared = self._shared_roots(tasks)
        return [self._root_value(t.task_id, mu) for t, mu in zip(tasks, shared, strict=True)]

    def root_strengths(self, tasks: Sequence[TaskSpec]) -> list[float]:
        """How many leaves' worth of belief each root prediction holds: the concentration
        plus the prompt's (decayed) outcomes."""
        kappa = self.concentrations.concentration(0)
        return [kappa + sum(self._root_evidence(t.task_id)) for t in tasks]

    def prefix_strengths(self, candidates: Sequence[tuple[RolloutTree, NodeState]]) -> np.ndarray:
        """As ``root_strengths``, for prefixes: their depth's concentration plus their leaves."""
        return np.fromiter(
            (self.concentrations.concentration(state.node.depth) + state.leaves for _, state in candidates),
            dtype=np.float64,
            count=len(candidates),
        )

    def _shared_prefixes(self, states: Sequence[NodeState]) -> float:
        """Bring each state's cached shared prediction up to this revision; the units spent."""
        revision = self.revision
        stale = [state for state in states if state.prediction_revision != revision]
        if stale:
            probs, _ = self.predictor.predict_many([state.features.sparse for state in stale])
            for state, p in zip(stale, probs.tolist(), strict=True):
                state.prediction, state.prediction_revision = p, revision
        return self.PREDICT_UNITS * len(stale)

    def _prefix_belief(self, tree: RolloutTree, state: NodeState) -> tuple[float, float]:
        """(prior mean, posterior mean) of V(H) for the prefix ending at ``state``; its
        shared prediction must be current."""
        mu = self._shared_roots([tree.task])[0]
        successes, failures = self._root_evidence(tree.task.task_id)
        # The prompt's correction leaves out H's own leaves: they are H's evidence below.
        elsewhere_s = tree.successes - state.successes
        elsewhere_f = (tree.leaves - tree.successes) - state.failures
        theta = posterior_mean(
            mu, successes + elsewhere_s, failures + elsewhere_f, self.concentrations.concentration(0)
        )
        prior = shifted_prior(state.prediction, mu, theta)
        kappa = self.concentrations.concentration(state.node.depth)
        return prior, posterior_mean(prior, state.successes, state.failures, kappa)

    def predict_prefixes(self, candidates: Sequence[tuple[RolloutTree, NodeState]]) -> tuple[np.ndarray, float]:
        """Predicted success of a new continuation of each (tree, prefix); the units spent."""
        units = self._shared_prefixes([state for _, state in candidates])
        values = np.fromiter(
            (self._prefix_belief(tree, state)[1] for tree, state in candidates), dtype=np.float64, count=len(candidates)
        )
        return values, units + self.PREDICT_UNITS * len(candidates)

    def prompt_embeddings(self, tasks: Sequence[TaskSpec]) -> np.ndarray:
        """One row per task: the text part of its root features, for diversity between prompts."""
        width = 1 << self.config.hash_bits
        out = np.zeros((len(tasks), width))
        for i, task in enumerate(tasks):
            f = self._featurize_root(task)
            text = f.indices < width
            out[i, f.indices[text]] = f.values[text]
        return out

    def mixed_probabilities(self, tasks: Sequence[TaskSpec]) -> list[float]:
        """DPS's predicted probability that each task's next group is mixed."""
        transition = dps_transition(self.dps_stickiness)
        return [dps_predict(self.dps_belief.get(t.task_id, dps_prior()), transition)[1] for t in tasks]

    def expected_turns(self, depth: int) -> float:
        """Turns a new continuation from ``depth`` is expected to take: observed so far, else
        the whole remaining horizon (early ends make it shorter, and cheaper to branch)."""
        total, count = self._turns_taken.get(depth, (0.0, 0.0))
        horizon = float(self.max_turns - depth)
        return min(horizon, max(1.0, total / count)) if count >= 1 else horizon

    # ------------------------------------------------------------------ decisions

    def record_decision(self, tree: RolloutTree, work_id: str, state: NodeState | None) -> None:
        """Remember what was believed when ``work_id`` was issued: continuations of ``state``'s
        prefix, or root rollouts when ``state`` is None."""
        task_id = tree.task.task_id
        if state is None:
            mu = self._shared_roots([tree.task])[0]
            successes, failures = self._root_evidence(task_id)
            record = DecisionRecord(
                task_id,
                0,
                self._root_value(task_id, mu),
                self.beta.predict(task_id),
                mu,
                successes,
                failures,
                self.root_strengths([tree.task])[0],
            )
        else:
            self._shared_prefixes([state])
            prior, value = self._prefix_belief(tree, state)
            record = DecisionRecord(
                task_id,
                state.node.depth,
                value,
                self.beta.predict(task_id),
                prior,
                state.successes,
                state.failures,
                self.prefix_strengths([(tree, state)])[0],
            )
        self._decisions.setdefault(tree.tree_id, {})[work_id] = record

    def _score_decisions(self, tree: RolloutTree) -> None:
        """Each decision of a closed tree against the leaves its work produced."""
        records = self._decisions.pop(tree.tree_id, {})
        outcomes: dict[str, list[int]] = {}
        for state in tree.nodes.values():
            if state.node.done and state.node.work_id in records:
                outcomes.setdefault(state.node.work_id, []).append(int(state.successes > 0))
                record = records[state.node.work_id]
                total, count = self._turns_taken.get(record.depth, (0.0, 0.0))
                self._turns_taken[record.depth] = (total + state.node.depth - record.depth, count + 1)
        for work_id, leaves in outcomes.items():
            record = records[work_id]
            self.decision_scores.add(record, leaves)
            wins = sum(leaves)
            self.concentrations.add(
                Decision(record.depth, record.prior_mean, record.successes, record.failures, wins, len(leaves) - wins)
            )

    def _score_every_node(self, tree: RolloutTree) -> None:
        """The leave-one-out check of a closed tree (allocator/evaluation.py), before any of
        its outcomes reach the model or the prompt's counts."""
        if not tree.leaves:
            return
        states = [state for state in tree.nodes.values() if state.leaves >= 1 and state.features is not None]
        self._shared_prefixes(states)
        task_id = tree.task.task_id
        prior_s, prior_f = self._root_evidence(task_id)
        tree_s, tree_f = tree.successes, tree.leaves - tree.successes
        base = self.beta.stats.get(task_id, PromptStats())
        base_s, base_f = base.successes + tree_s, base.failures + tree_f
        mu = self._shared_roots([tree.task])[0]
        nodes = [
            NodeEvidence(
                task_id,
                0,
                mu,
                self.concentrations.concentration(0),
                prior_s + tree_s,
                prior_f + tree_f,
                (tree_s, tree_f),
                base_s,
                base_f,
            )
        ]
        for state in states:
            prior, _ = self._prefix_belief(tree, state)
            nodes.append(
                NodeEvidence(
                    task_id,
                    state.node.depth,
                    prior,
                    self.concentrations.concentration(state.node.depth),
                    state.successes,
                    state.failures,
                    (state.successes, state.failures),
                    base_s,
                    base_f,
                )
            )
        self.loo_scores.add_samples(leave_one_out(nodes))

    # ------------------------------------------------------------------ learning

    def learn_from_tree(self, tree: RolloutTree, batch: TrainingBatch, policy_version: int) -> int:
        """Add a closed tree's samples to ``batch``, score its decisions and every node, and
        update the prompt's statistics; the number of samples left out as too stale."""
        self._score_decisions(tree)
        self._score_every_node(tree)
        too_stale = 0
        if tree.leaves:
            root: SparseFeatures | None = self._root_features.pop(tree.tree_id, None)
            batch.samples.append(root if root is not None else self._featurize_root(tree.task))
            batch.targets.append(tree.successes / tree.leaves)
            batch.weights.append(1.0)
        for state in tree.nodes.values():
            if state.leaves < 1 or state.features is None:
                continue
            weight = self.predictor.sample_weight(policy_version - state.node.policy_version)
            if weight <= 0:
                too_stale += 1
                continue
            batch.samples.append(state.features.sparse)
            batch.targets.append(state.successes / state.leaves)
            batch.weights.append(weight)
        successes, failures = tree.successes, tree.leaves - tree.successes
        task_id = tree.task.task_id
        old = self.prompt_stats.get(task_id, PromptStats())
        decay = self.prompt_stats_decay
        self.prompt_stats[task_id] = PromptStats(old.successes * decay + successes, old.failures * decay + failures)
        self.beta.observe(task_id, successes, failures)
        if tree.leaves:
            belief = self.dps_belief.get(task_id, dps_prior())
            self.dps_belief[task_id] = dps_update(
                belief,
                dps_transition(self.dps_stickiness),
                dps_emission(tree.leaves),
                dps_category(successes, tree.leaves),
            )
        return too_stale

    def evaluate_then_train(self, batch: TrainingBatch) -> None:
        if batch.samples:
            # Prequential: every sample is scored before the model has seen it.
            probs, _ = self.predictor.predict_many(batch.samples)
            self._evaluation.extend(p=probs, target=batch.targets)
            self.predictor.update(batch.samples, batch.targets, batch.weights)
        self.concentrations.refit()

    def scores(self) -> dict[str, float]:
        """The predictor's decision-time scores (allocator/evaluation.py) with the Beta
        baseline's on the same leaves, the shared model's own prequential scores, and the
        fitted concentrations (NaN before any sample)."""
        p = self._evaluation.column("p")
        y = self._evaluation.column("target")
        out: dict[str, float] = dict(self.decision_scores.metrics())
        out.update(self.loo_scores.metrics("predictor_loo", "beta_loo"))
        out.update(
            shared_model_brier=float(np.mean((p - y) ** 2)) if len(p) else math.nan,
            shared_model_auc=auc_score(p, (y >= 0.5).astype(np.int64)) if len(p) else math.nan,
            shared_model_calibration_error=calibration_error(p, y) if len(p) else math.nan,
        )
        for depth in range(self.max_turns + 1):
            out[f"predictor_concentration_depth{depth}"] = self.concentrations.concentration(depth)
            out[f"expected_turns_depth{depth}"] = self.expected_turns(depth)
        return out

    # ------------------------------------------------------------------ features

    def _prompt_counts(self, task: TaskSpec) -> dict[int, float]:
        counts = self._prompt_count_cache.get(task.task_id)
        if counts is None:
            counts = text_counts("p", self.prompt_text(task), self.config)
            self._prompt_count_cache[task.task_id] = counts
        return counts

    def _prompt_words(self, task: TaskSpec) -> int:
        words = self._prompt_word_cache.get(task.task_id)
        if words is None:
            words = self._prompt_word_cache[task.task_id] = word_count(self.prompt_text(task))
        return words

    def _featurize_root(self, task: TaskSpec) -> SparseFeatures:
        cached = self._root_feature_cache.get(task.task_id)
        if cached is not None:
            return cached
        features = features_from_counts(
            self._prompt_counts(task),
            depth=0,
            max_turns=self.max_turns,
            tool_calls=0,
            last_observation="",
            prompt_words=self._prompt_words(task),
            config=self.config,
        )
        self._root_feature_cache[task.task_id] = features
        return features

    def _featurize_node(self, tree: RolloutTree, state: NodeState) -> PrefixFeatures:
        """Built from the parent's cached counts plus this turn, so each node costs one turn."""
        node = state.node
        parent_state = tree.nodes[node.parent_id] if node.parent_id is not None else None
        parent = parent_state.features if parent_state is not None else None
        base = parent.text_counts if parent is not None else self._prompt_counts(tree.task)
        counts = merge_counts(base, turn_counts(node.action_text, node.observation_text, self.config))
        tool_calls = (parent.tool_calls if parent is not None else 0) + int(bool(node.observation_text.strip()))
        sparse = features_from_counts(
            counts,
            depth=node.depth,
            max_turns=self.max_turns,
            tool_calls=tool_calls,
            last_observation=node.observation_text,
            prompt_words=self._prompt_words(tree.task),
            config=self.config,
            env_score=node.env_score,
            previous_env_score=parent_state.node.env_score if parent_state is not None else None,
        )
        return PrefixFeatures(sparse, counts, tool_calls)


@dataclass
class Totals:
    """Running totals over closed steps and the trees they emitted, for the metrics."""

    budget_turns: int = 0
    budget_tokens: int = 0
    overspent_turns: int = 0
    trained_tokens: int = 0
    # Tokens whose flat-GRPO advantage is non-zero: their subtree's mean outcome differs
    # from the group's.
    informative_tokens: int = 0

    def add_step(self, budget: BudgetLedger) -> None:
        self.budget_turns += budget.used_turns
        self.budget_tokens += budget.used_tokens
        self.overspent_turns += budget.overspent_turns

    def add_tree(self, tree: RolloutTree) -> None:
        root_value = tree.successes / tree.leaves if tree.leaves else 0.0
        for state in tree.nodes.values():
            if state.leaves < 1:
                continue
            tokens = len(state.node.action_token_ids)
            self.trained_tokens += tokens
            if abs(state.successes / state.leaves - root_value) > 1e-12:
                self.informative_tokens += tokens


def _settled_turns(counters: Counter[str]) -> int:
    return sum(v for k, v in counters.items() if k == "turns_roots" or k.startswith("turns_branches_depth"))


def allocator_metrics(
    counters: Counter[str],
    totals: Totals,
    scores: dict[str, float],
    *,
    open_steps: int,
    open_trees: int,
    open_nodes: int,
    policy_version: int,
) -> dict[str, float | int]:
    """Every counter, then the ratios derived from them, the predictor's ``scores`` and the
    open state."""
    c = counters
    groups = c["groups"]
    turns, trained = totals.budget_turns, totals.trained_tokens
    hits, misses = c["affinity_hits"], c["affinity_misses"]
    out: dict[str, float | int] = dict(c)
    out.update(
        effective_ratio=(c["groups_mixed"] / groups) if groups else 0.0,
        mixed_groups_per_100_turns=(100.0 * c["groups_mixed"] / turns) if turns else 0.0,
        mixed_branch_groups_per_100_turns=(100.0 * c["branch_groups_mixed"] / turns) if turns else 0.0,
        informative_token_fraction=(totals.informative_tokens / trained) if trained else 0.0,
        budget_turns_used=turns,
        budget_tokens_used=totals.budget_tokens,
        budget_overspent_turns=totals.overspent_turns,
        root_turn_share=(c["turns_roots"] / settled) if (settled := _settled_turns(c)) else 0.0,
        affinity_hit_rate=(hits / (hits + misses)) if hits + misses else 0.0,
        **scores,
        open_steps=open_steps,
        open_trees=open_trees,
        open_nodes=open_nodes,
        policy_version=policy_version,
    )
    return out
