"""How well the allocator's predictions foresee what its decisions produce, scored as they happen.

A prediction matters where it steers a decision: when root rollouts of a prompt or
continuations of a prefix are issued, the allocator believes each new leaf succeeds with
probability p. So every issued work item records p (and what the per-prompt Beta
baseline would have said), and every leaf that item produces is a labelled sample
(p, outcome). This is prequential by construction: p was fixed before the leaf existed,
and it may use every outcome known at that moment (the prefix's own chain included),
none after.

Scored over a sliding window: AUC (all decisions, roots, prefixes, and within a prompt,
which stage 2 depends on), Brier score against the baseline's, calibration error, and per
depth; plus the calibration of predicted P(mixed) for the sibling groups the decisions made.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .predictor import auc, calibration_error, within_group_auc


@dataclass(frozen=True)
class DecisionRecord:
    """What the allocator believed when it issued one work item."""

    task_id: str
    depth: int  # of the node continued; 0 for root rollouts
    prediction: float  # P(a new leaf succeeds)
    baseline: float  # the per-prompt Beta baseline's P at the same moment
    prior_mean: float  # the posterior's prior mean for the node (allocator/posterior.py)
    successes: float  # the evidence the prediction used
    failures: float


@dataclass(frozen=True)
class Sample:
    prediction: float
    baseline: float
    outcome: int
    task_id: str
    depth: int


def p_mixed(p: float, k: int) -> float:
    """P(k Bernoulli(p) leaves are not all equal)."""
    return 1.0 - p**k - (1.0 - p) ** k if k >= 2 else 0.0


@dataclass
class DecisionScores:
    window: int = 20_000
    max_depth: int = 8

    def __post_init__(self) -> None:
        self.samples: deque[Sample] = deque(maxlen=self.window)
        # (predicted P(mixed), whether the group of a decision's leaves was mixed)
        self.groups: deque[tuple[float, int]] = deque(maxlen=self.window)

    def add(self, record: DecisionRecord, outcomes: list[int]) -> None:
        for y in outcomes:
            self.samples.append(Sample(record.prediction, record.baseline, int(y), record.task_id, record.depth))
        if len(outcomes) >= 2:
            self.groups.append((p_mixed(record.prediction, len(outcomes)), int(0 < sum(outcomes) < len(outcomes))))

    def metrics(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"predictor_decision_leaves": len(self.samples)}
        if not self.samples:
            return out
        p = np.array([s.prediction for s in self.samples])
        b = np.array([s.baseline for s in self.samples])
        y = np.array([s.outcome for s in self.samples])
        depth = np.array([s.depth for s in self.samples])
        groups = [s.task_id for s in self.samples]
        brier = float(np.mean((p - y) ** 2))
        baseline = float(np.mean((b - y) ** 2))
        out.update(
            predictor_auc=auc(p, y),
            predictor_auc_within_prompt=within_group_auc(p, y, groups),
            predictor_brier=brier,
            beta_baseline_brier=baseline,
            beta_baseline_auc=auc(b, y),
            predictor_brier_vs_beta=brier / baseline if baseline > 0 else math.nan,
            predictor_calibration_error=calibration_error(p, y),
        )
        roots, prefixes = depth == 0, depth > 0
        out["predictor_auc_roots"] = auc(p[roots], y[roots]) if roots.any() else math.nan
        out["predictor_auc_prefixes"] = auc(p[prefixes], y[prefixes]) if prefixes.any() else math.nan
        for d in range(min(int(depth.max()), self.max_depth) + 1):
            at = depth == d
            if at.any():
                out[f"predictor_depth{d}_leaves"] = int(at.sum())
                out[f"predictor_depth{d}_auc"] = auc(p[at], y[at])
                out[f"predictor_depth{d}_brier"] = float(np.mean((p[at] - y[at]) ** 2))
                out[f"predictor_depth{d}_success"] = float(y[at].mean())
        if self.groups:
            predicted, mixed = (np.array(col, dtype=np.float64) for col in zip(*self.groups))
            out.update(
                predictor_mixed_predicted=float(predicted.mean()),
                predictor_mixed_observed=float(mixed.mean()),
                predictor_mixed_calibration_error=calibration_error(predicted, mixed),
            )
        return out
