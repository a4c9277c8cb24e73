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

Decision-time scores are scores on the cases the allocator chose, and TRACE chooses the
uncertain ones: a prompt it opens sits near 0.5 by design, and on such a restricted range
even the true probability ranks outcomes poorly (in the simulator, the same predictor
scores an AUC near 0.9 on GRPO's uniform draws and near 0.67 on TRACE's). So every closed
tree is also scored at all of its nodes, chosen or not, by leaving one leaf out
(``leave_one_out``): the prediction for a leaf under node H uses every outcome known except
that leaf, with the model as it was before it trained on the tree.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .allocation import v_root_table
from .posterior import posterior_mean
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
    # How many leaves' worth of belief the prediction holds (None: taken as exact).
    strength: float | None = None


@dataclass(frozen=True)
class Sample:
    prediction: float
    baseline: float
    outcome: int
    task_id: str
    depth: int


def p_mixed(p: float, k: int, strength: float | None = None) -> float:
    """P(k leaves are not all equal) when each succeeds with probability p, or, with
    ``strength``, when they share an unknown rate believed Beta(strength p, strength (1 - p))."""
    return float(v_root_table(p, max(k, 1), None if strength is None else np.asarray(strength))[k]) if k >= 2 else 0.0


@dataclass
class DecisionScores:
    window: int = 20_000
    max_depth: int = 8

    def __post_init__(self) -> None:
        self.samples: deque[Sample] = deque(maxlen=self.window)
        # (predicted P(mixed), whether the group of a decision's leaves was mixed)
        self.groups: deque[tuple[float, int]] = deque(maxlen=self.window)

    def add_samples(self, samples: list[Sample]) -> None:
        self.samples.extend(samples)

    def add(self, record: DecisionRecord, outcomes: list[int]) -> None:
        for y in outcomes:
            self.samples.append(Sample(record.prediction, record.baseline, int(y), record.task_id, record.depth))
        if len(outcomes) >= 2:
            predicted = p_mixed(record.prediction, len(outcomes), record.strength)
            self.groups.append((predicted, int(0 < sum(outcomes) < len(outcomes))))

    def metrics(self, name: str = "predictor", baseline_name: str = "beta_baseline") -> dict[str, float | int]:
        out: dict[str, float | int] = {f"{name}_leaves": len(self.samples)}
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
            {
                f"{name}_auc": auc(p, y),
                f"{name}_auc_within_prompt": within_group_auc(p, y, groups),
                f"{name}_brier": brier,
                f"{baseline_name}_brier": baseline,
                f"{baseline_name}_auc": auc(b, y),
                f"{name}_brier_vs_beta": brier / baseline if baseline > 0 else math.nan,
                f"{name}_calibration_error": calibration_error(p, y),
            }
        )
        if name == "predictor":
            # Left out of the leave-one-out scores: there a per-prompt counter's prediction
            # of a leaf is lower exactly when the leaf succeeded, an artifact with AUC 0.
            out[f"{baseline_name}_auc_within_prompt"] = within_group_auc(b, y, groups)
        roots, prefixes = depth == 0, depth > 0
        out[f"{name}_auc_roots"] = auc(p[roots], y[roots]) if roots.any() else math.nan
        out[f"{name}_auc_prefixes"] = auc(p[prefixes], y[prefixes]) if prefixes.any() else math.nan
        for d in range(min(int(depth.max()), self.max_depth) + 1):
            at = depth == d
            if at.any():
                out[f"{name}_depth{d}_leaves"] = int(at.sum())
                out[f"{name}_depth{d}_auc"] = auc(p[at], y[at])
                out[f"{name}_depth{d}_brier"] = float(np.mean((p[at] - y[at]) ** 2))
                out[f"{baseline_name}_depth{d}_brier"] = float(np.mean((b[at] - y[at]) ** 2))
                out[f"{name}_depth{d}_success"] = float(y[at].mean())
        if self.groups:
            predicted, mixed = (np.array(col, dtype=np.float64) for col in zip(*self.groups, strict=True))
            out.update(
                {
                    f"{name}_mixed_predicted": float(predicted.mean()),
                    f"{name}_mixed_observed": float(mixed.mean()),
                    f"{name}_mixed_calibration_error": calibration_error(predicted, mixed),
                }
            )
        return out


@dataclass(frozen=True)
class NodeEvidence:
    """What is known at one node of a closed tree, for the leave-one-out check.

    ``successes``/``failures``: the leaves below the node (for the root, the prompt's earlier
    outcomes too); the predictor's prior mean and concentration there; and the prompt-level
    counts the per-prompt Beta baseline sees (earlier outcomes plus the whole tree's leaves).
    """

    task_id: str
    depth: int
    prior_mean: float
    concentration: float
    successes: float
    failures: float
    leaves_below: tuple[int, int]  # (successful, failed) leaves below the node in this tree
    baseline_successes: float
    baseline_failures: float


def leave_one_out(nodes: list[NodeEvidence]) -> list[Sample]:
    """One sample per (node, leaf below it): each leaf predicted from all the evidence but itself.

    The prediction of a successful leaf removes one success from both the predictor's and
    the baseline's counts, a failed leaf one failure; so each node gives at most two
    distinct predictions, repeated once per leaf.
    """
    samples = []
    for node in nodes:
        for outcome, count in ((1, node.leaves_below[0]), (0, node.leaves_below[1])):
            if count < 1:
                continue
            s, f = node.successes - outcome, node.failures - (1 - outcome)
            bs, bf = node.baseline_successes - outcome, node.baseline_failures - (1 - outcome)
            prediction = posterior_mean(node.prior_mean, s, f, node.concentration)
            baseline = (bs + 1.0) / (bs + bf + 2.0)
            samples.extend([Sample(prediction, baseline, outcome, node.task_id, node.depth)] * count)
    return samples
