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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from protocol import TaskSpec

from .budget import BudgetLedger
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
        # Root features of each open tree, taken when it was issued: what it is trained on.
        self._root_features: dict[str, SparseFeatures] = {}
        self._prompt_count_cache: dict[str, dict[int, float]] = {}
        # A prompt's root features and the statistics they were built with.
        self._root_feature_cache: dict[str, tuple[PromptStats, SparseFeatures]] = {}
        self._evaluation: dict[str, deque[float]] = {
            "p": deque(maxlen=self.EVALUATION_WINDOW),
            "beta": deque(maxlen=self.EVALUATION_WINDOW),
            "target": deque(maxlen=self.EVALUATION_WINDOW),
        }

    @property
    def revision(self) -> int:
        """Changes whenever the model is retrained: predictions of two revisions never mix."""
        return self.predictor.revision

    # ------------------------------------------------------------------ trees and nodes

    def open_tree(self, tree_id: str, task: TaskSpec) -> None:
        self._root_features[tree_id] = self._featurize_root(task)

    def drop_tree(self, tree_id: str) -> None:
        """Forget a tree that closed without a complete path (it teaches nothing)."""
        self._root_features.pop(tree_id, None)

    def observe_node(self, tree: RolloutTree, state: NodeState) -> None:
        """Set the features of a node just attached to ``tree`` (its parent already has them)."""
        state.features = self._featurize_node(tree, state)

    # ------------------------------------------------------------------ predictions

    def score_roots(self, tasks: Sequence[TaskSpec], units: float) -> tuple[list[float], float]:
        """Predicted success of the leading ``tasks`` that ``units`` pay for (at least one),
        and the units left."""
        batch: list[SparseFeatures] = []
        for task in tasks:
            if units <= 0:
                break
            units -= self.PREDICT_UNITS if self._root_features_cached(task) else self.FEATURIZE_UNITS
            batch.append(self._featurize_root(task))
        return self.predictor.predict_many(batch)[0].tolist(), units

    def predict_roots(self, tasks: Sequence[TaskSpec]) -> list[float]:
        probs, _ = self.predictor.predict_many([self._featurize_root(t) for t in tasks])
        return probs.tolist()

    def refresh_predictions(self, states: Sequence[NodeState]) -> float:
        """Bring the cached ``prediction`` of every state up to this revision; the units spent."""
        revision = self.revision
        stale = [state for state in states if state.prediction_revision != revision]
        if stale:
            probs, _ = self.predictor.predict_many([state.features.sparse for state in stale])
            for state, p in zip(stale, probs.tolist()):
                state.prediction, state.prediction_revision = p, revision
        return self.PREDICT_UNITS * len(stale)

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

    # ------------------------------------------------------------------ learning

    def learn_from_tree(self, tree: RolloutTree, batch: TrainingBatch, policy_version: int) -> int:
        """Add a closed tree's samples to ``batch`` and update the prompt's statistics; the
        number of samples left out as too stale."""
        too_stale = 0
        if tree.leaves:
            root: SparseFeatures | None = self._root_features.pop(tree.tree_id, None)
            batch.samples.append(root if root is not None else self._featurize_root(tree.task))
            batch.targets.append(tree.successes / tree.leaves)
            batch.weights.append(1.0)
            self._evaluation["beta"].append(self.beta.predict(tree.task.task_id))
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
            self._evaluation["beta"].append(self.beta.predict(tree.task.task_id))
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
        if not batch.samples:
            return
        # Prequential: every sample is scored before the model has seen it.
        probs, _ = self.predictor.predict_many(batch.samples)
        self._evaluation["p"].extend(probs.tolist())
        self._evaluation["target"].extend(batch.targets)
        self.predictor.update(batch.samples, batch.targets, batch.weights)

    def scores(self) -> dict[str, float]:
        """Prequential Brier score, AUC and calibration of the predictor, and the Beta
        baseline's Brier score on the same samples (NaN before any sample)."""
        p = self._evaluation["p"]
        y = self._evaluation["target"]
        return dict(
            predictor_brier=float(np.mean((np.asarray(p) - np.asarray(y)) ** 2)) if p else math.nan,
            predictor_auc=auc_score(list(p), [int(t >= 0.5) for t in y]) if p else math.nan,
            predictor_calibration_error=calibration_error(p, y) if p else math.nan,
            beta_baseline_brier=float(np.mean((np.asarray(self._evaluation["beta"]) - np.asarray(y)) ** 2))
            if p
            else math.nan,
        )

    # ------------------------------------------------------------------ features

    def _prompt_counts(self, task: TaskSpec) -> dict[int, float]:
        counts = self._prompt_count_cache.get(task.task_id)
        if counts is None:
            counts = text_counts("p", self.prompt_text(task), self.config)
            self._prompt_count_cache[task.task_id] = counts
        return counts

    def _root_features_cached(self, task: TaskSpec) -> bool:
        cached = self._root_feature_cache.get(task.task_id)
        return cached is not None and cached[0] == self.prompt_stats.get(task.task_id, PromptStats())

    def _featurize_root(self, task: TaskSpec) -> SparseFeatures:
        stats = self.prompt_stats.get(task.task_id, PromptStats())
        cached = self._root_feature_cache.get(task.task_id)
        if cached is not None and cached[0] == stats:
            return cached[1]
        features = features_from_counts(
            self._prompt_counts(task),
            depth=0,
            max_turns=self.max_turns,
            tool_calls=0,
            last_observation="",
            prompt_stats=stats,
            config=self.config,
        )
        self._root_feature_cache[task.task_id] = (stats, features)
        return features

    def _featurize_node(self, tree: RolloutTree, state: NodeState) -> PrefixFeatures:
        """Built from the parent's cached counts plus this turn, so each node costs one turn."""
        node = state.node
        parent = tree.nodes[node.parent_id].features if node.parent_id is not None else None
        base = parent.text_counts if parent is not None else self._prompt_counts(tree.task)
        counts = merge_counts(base, turn_counts(node.action_text, node.observation_text, self.config))
        tool_calls = (parent.tool_calls if parent is not None else 0) + int(bool(node.observation_text.strip()))
        sparse = features_from_counts(
            counts,
            depth=node.depth,
            max_turns=self.max_turns,
            tool_calls=tool_calls,
            last_observation=node.observation_text,
            prompt_stats=self.prompt_stats.get(tree.task.task_id, PromptStats()),
            config=self.config,
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
        informative_token_fraction=(totals.informative_tokens / trained) if trained else 0.0,
        budget_turns_used=turns,
        budget_tokens_used=totals.budget_tokens,
        budget_overspent_turns=totals.overspent_turns,
        affinity_hit_rate=(hits / (hits + misses)) if hits + misses else 0.0,
        **scores,
        open_steps=open_steps,
        open_trees=open_trees,
        open_nodes=open_nodes,
        policy_version=policy_version,
    )
    return out
