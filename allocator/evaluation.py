"""How well the allocator's predictions foresee what its decisions produce, scored as they happen.

A prediction matters where it steers a decision: when root rollouts of a prompt or
continuations of a prefix are issued, the allocator believes each new leaf succeeds with
probability p. So every issued work item records p (and what the per-prompt Beta
baseline would have said), and every leaf that item produces is a labelled sample
(p, outcome). This is prequential by construction: p was fixed before the leaf existed,
and it may use every outcome known at that moment (the prefix's own chain included),
none after.

Scored over a sliding window (``Window``: columns allocated once at their full size, so a
long run's memory does not climb while the window fills): AUC (all decisions, roots, prefixes, and within a prompt,
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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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


class Window:
    """The last ``capacity`` rows of a few typed columns, in arrays allocated once at full size.

    A deque of row objects grows with every row until it is full, which on a long run reads
    as a leak for hours; these columns hold the same rows in a fixed footprint. Row order is
    not kept: every score taken over a window is order-free.
    """

    def __init__(self, capacity: int, **dtypes: npt.DTypeLike) -> None:
        if capacity < 1:
            raise ValueError("a window needs a capacity of at least one row")
        self.capacity = capacity
        self._columns = {name: np.zeros(capacity, dtype=dtype) for name, dtype in dtypes.items()}
        self._size = 0
        self._next = 0  # the slot the next row overwrites once the window is full

    def __len__(self) -> int:
        return self._size

    def extend(self, **columns: Sequence[object] | np.ndarray) -> None:
        """Append rows given column by column; beyond ``capacity`` the oldest rows give way."""
        if set(columns) != set(self._columns):
            raise ValueError(f"a window row has the columns {sorted(self._columns)}, got {sorted(columns)}")
        lengths = {len(values) for values in columns.values()}
        if len(lengths) != 1:
            raise ValueError("every column of the rows must be as long as the others")
        n = lengths.pop()
        skip = max(0, n - self.capacity)  # rows that would be overwritten within this call
        slots = (self._next + np.arange(n - skip)) % self.capacity
        for name, values in columns.items():
            column = self._columns[name]
            if column.dtype == object:
                # An object column takes references as they are (no conversion to a fixed-width str).
                for slot, value in zip(slots.tolist(), list(values)[skip:], strict=True):
                    column[slot] = value
            else:
                column[slots] = np.asarray(values)[skip:]
        self._next = (self._next + n - skip) % self.capacity
        self._size = min(self.capacity, self._size + n - skip)

    def column(self, name: str) -> np.ndarray:
        """The rows held (a view while the window is filling, the whole array once full)."""
        return self._columns[name][: self._size]

    @property
    def nbytes(self) -> int:
        """Bytes of the columns' arrays (for an object column, its references only)."""
        return sum(column.nbytes for column in self._columns.values())


@dataclass
class DecisionScores:
    window: int = 20_000
    max_depth: int = 8

    def __post_init__(self) -> None:
        self.samples = Window(
            self.window, prediction=np.float64, baseline=np.float64, outcome=np.int8, depth=np.int16, task_id=object
        )
        # (predicted P(mixed), whether the group of a decision's leaves was mixed)
        self.groups = Window(self.window, predicted=np.float64, mixed=np.int8)

    def add_samples(self, samples: list[Sample]) -> None:
        self.samples.extend(
            prediction=[s.prediction for s in samples],
            baseline=[s.baseline for s in samples],
            outcome=[s.outcome for s in samples],
            depth=[s.depth for s in samples],
            task_id=[s.task_id for s in samples],
        )

    def add(self, record: DecisionRecord, outcomes: list[int]) -> None:
        n = len(outcomes)
        self.samples.extend(
            prediction=[record.prediction] * n,
            baseline=[record.baseline] * n,
            outcome=[int(y) for y in outcomes],
            depth=[record.depth] * n,
            task_id=[record.task_id] * n,
        )
        if n >= 2:
            predicted = p_mixed(record.prediction, n, record.strength)
            self.groups.extend(predicted=[predicted], mixed=[int(0 < sum(outcomes) < n)])

    def metrics(self, name: str = "predictor", baseline_name: str = "beta_baseline") -> dict[str, float | int]:
        out: dict[str, float | int] = {f"{name}_leaves": len(self.samples)}
        if not self.samples:
            return out
        p = self.samples.column("prediction")
        b = self.samples.column("baseline")
        y = self.samples.column("outcome").astype(np.int64)
        depth = self.samples.column("depth").astype(np.int64)
        groups = self.samples.column("task_id").tolist()
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
        if len(self.groups):
            predicted = self.groups.column("predicted")
            mixed = self.groups.column("mixed").astype(np.float64)
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
