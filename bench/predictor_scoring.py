"""The predictor benchmark's pure parts: choosing the diagnostic prefixes, the depth-only and
split-half Monte-Carlo references, and the scores of every predictor against the same outcomes.

Each diagnostic prefix H has n Monte-Carlo continuations from H (``outcomes``, by sample
index); each continuation is one labelled sample for every predictor, and consecutive
disjoint pairs of them ((0, 1), (2, 3), ...) are the groups of k = 2 whose mixing the
predictors' P(mixed) is scored on, as stage 2 issues them.

The AUCs rank prefixes, so they count only (success, failure) pairs of samples from two
*different* prefixes: a forecaster gives one prefix's samples one score, so its own pairs
are ties that only pull the AUC towards 0.5, and the split-half oracle's own pairs are an
artifact (the half that predicts has fewer successes exactly when the half it is scored on
has more). "Within a prompt" keeps only the pairs whose prefixes share a prompt: how well
a predictor orders one prompt's own prefixes, which is what stage 2 decides on.

The oracle predicts the samples of each half with the mean of the other half; its noise
ceiling brackets what the true V(H) would score: Brier no lower than the mean Bernoulli
variance V(1 - V) (estimated without bias by k (n - k) / (n (n - 1))), AUC between the
split-half oracle's (its estimates are noisy) and the in-sample AUC of the n-sample means
(they have seen their own labels).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from allocator.evaluation import p_mixed
from allocator.predictor import auc, calibration_error

#: The forecasters every prefix carries, in table order, then the Monte-Carlo oracle.
FORECASTERS = ("ours", "shared", "beta", "depth")
ORACLE = "oracle"
PREDICTORS = (*FORECASTERS, ORACLE)
DESCRIPTIONS = {
    "ours": "OutcomeModel: shared model + tree-evidence posterior (the prefix's own chain's leaf, the tree's others)",
    "shared": "the shared model alone (no evidence)",
    "beta": "per-prompt Beta(1, 1) over every outcome the prompt has had (its tree's leaves)",
    "depth": "success rate of prefixes at the same depth in the training half",
    ORACLE: "Monte-Carlo oracle, split halves: the mean of one half of the continuations predicts the other",
}


@dataclass(frozen=True)
class Forecast:
    """A predictor's belief about V(H): its mean, and how many leaves' worth of evidence it holds
    (``strength``: Beta(strength p, strength (1 - p)); None takes V(H) as exactly ``success``)."""

    success: float
    strength: float | None = None

    @property
    def mixed2(self) -> float:
        """P(two new continuations disagree) under this belief."""
        return p_mixed(self.success, 2, self.strength)


@dataclass(frozen=True)
class DiagnosticPrefix:
    task_id: str
    depth: int
    # Outcomes (1 = success) of the Monte-Carlo continuations, by sample index.
    outcomes: tuple[int, ...]
    forecasts: Mapping[str, Forecast]


class Labelled(NamedTuple):
    """One prediction and what happened: a continuation's success, or a pair's mixing."""

    prediction: float
    outcome: int
    prefix: int  # index of the prefix in the diagnostic set
    task_id: str
    depth: int


# ---------------------------------------------------------------------- choosing prefixes


def depth_quotas(available: Mapping[int, int], total: int) -> dict[int, int]:
    """How many of ``total`` prefixes each depth gets: equal shares, a depth with fewer
    candidates than its share takes all it has and the rest is shared among the others
    (the scarcest depths are served first and get any rounding up)."""
    quotas: dict[int, int] = {}
    left = total
    order = sorted(available, key=lambda depth: (available[depth], depth))
    for served, depth in enumerate(order):
        share = -(-left // (len(order) - served))
        quotas[depth] = min(available[depth], share)
        left -= quotas[depth]
    return quotas


def select_prefixes(depths: Sequence[int], total: int, seed: int) -> list[int]:
    """Indices (ascending) of ``total`` candidates spread over depths by ``depth_quotas``,
    drawn at random within each depth."""
    rng = np.random.default_rng(seed)
    by_depth: dict[int, list[int]] = {}
    for index, depth in enumerate(depths):
        by_depth.setdefault(depth, []).append(index)
    chosen: list[int] = []
    for depth, quota in sorted(depth_quotas({d: len(ix) for d, ix in by_depth.items()}, total).items()):
        chosen.extend(int(i) for i in rng.choice(by_depth[depth], size=quota, replace=False))
    return sorted(chosen)


# ---------------------------------------------------------------------- references


@dataclass(frozen=True)
class DepthRates:
    """Pooled success of prefixes by depth: the leaves that succeeded over the leaves below
    every prefix of that depth; a depth never seen falls back to the rate over all depths."""

    rates: Mapping[int, float]
    overall: float

    @classmethod
    def pooled(cls, rows: Iterable[tuple[int, int, int]]) -> DepthRates:
        """From (depth, successes, leaves) per prefix."""
        wins: dict[int, int] = {}
        leaves: dict[int, int] = {}
        for depth, successes, count in rows:
            wins[depth] = wins.get(depth, 0) + successes
            leaves[depth] = leaves.get(depth, 0) + count
        total = sum(leaves.values())
        overall = sum(wins.values()) / total if total else 0.5
        return cls({d: wins[d] / leaves[d] for d in sorted(leaves) if leaves[d]}, overall)

    def rate(self, depth: int) -> float:
        return self.rates.get(depth, self.overall)


def halves(outcomes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    middle = len(outcomes) // 2
    return tuple(outcomes[:middle]), tuple(outcomes[middle:])


def pairs_of(outcomes: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive disjoint pairs; an odd last outcome is left out."""
    return [(outcomes[i], outcomes[i + 1]) for i in range(0, len(outcomes) - 1, 2)]


def forecast_samples(prefixes: Sequence[DiagnosticPrefix], name: str) -> tuple[list[Labelled], list[Labelled]]:
    """(success samples, mixing samples of the pairs) of forecaster ``name``."""
    samples: list[Labelled] = []
    pairs: list[Labelled] = []
    for index, prefix in enumerate(prefixes):
        forecast = prefix.forecasts[name]
        samples += [Labelled(forecast.success, y, index, prefix.task_id, prefix.depth) for y in prefix.outcomes]
        mixed2 = forecast.mixed2
        pairs += [
            Labelled(mixed2, int(a != b), index, prefix.task_id, prefix.depth) for a, b in pairs_of(prefix.outcomes)
        ]
    return samples, pairs


def split_half_samples(prefixes: Sequence[DiagnosticPrefix]) -> tuple[list[Labelled], list[Labelled]]:
    """The oracle's samples: each half's outcomes (and the pairs inside it) predicted from the
    mean of the other half, its P(mixed) that of a rate known to be that mean."""
    samples: list[Labelled] = []
    pairs: list[Labelled] = []
    for index, prefix in enumerate(prefixes):
        first, second = halves(prefix.outcomes)
        for predicting, scored in ((first, second), (second, first)):
            mean = sum(predicting) / len(predicting)
            samples += [Labelled(mean, y, index, prefix.task_id, prefix.depth) for y in scored]
            mixed2 = Forecast(mean).mixed2
            pairs += [Labelled(mixed2, int(a != b), index, prefix.task_id, prefix.depth) for a, b in pairs_of(scored)]
    return samples, pairs


# ---------------------------------------------------------------------- scores


def _ordered(p: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(pairs ranked right, ties counting half; all pairs) over the (success, failure) pairs."""
    positives = int(y.sum())
    pairs = positives * (len(y) - positives)
    return (auc(p, y) * pairs, pairs) if pairs else (0.0, 0)


def between_prefix_auc(samples: Sequence[Labelled], within_prompt: bool = False) -> float:
    """AUC over the (success, failure) pairs of samples of different prefixes (of the same
    prompt with ``within_prompt``); NaN without such a pair."""
    if not samples:
        return math.nan
    p = np.array([s.prediction for s in samples], dtype=np.float64)
    y = np.array([s.outcome for s in samples], dtype=np.int64)
    prefix = np.array([s.prefix for s in samples])
    prompt = np.array([s.task_id for s in samples]) if within_prompt else np.zeros(len(samples), dtype=np.int64)
    right, pairs = 0.0, 0
    for group in np.unique(prompt):
        in_group = prompt == group
        group_right, group_pairs = _ordered(p[in_group], y[in_group])
        for own in np.unique(prefix[in_group]):
            own_right, own_pairs = _ordered(p[prefix == own], y[prefix == own])
            group_right, group_pairs = group_right - own_right, group_pairs - own_pairs
        right, pairs = right + group_right, pairs + group_pairs
    return right / pairs if pairs else math.nan


def informative_prefix_pairs(samples: Sequence[Labelled], within_prompt: bool = False) -> int:
    """How many pairs of prefixes (of one prompt with ``within_prompt``) hold a (success,
    failure) pair of samples: what an AUC above is made of."""
    counts: dict[int, tuple[str, int, int]] = {}
    for s in samples:
        group, wins, losses = counts.get(s.prefix, (s.task_id if within_prompt else "", 0, 0))
        counts[s.prefix] = (group, wins + s.outcome, losses + 1 - s.outcome)
    return sum(
        1
        for (group, wins, losses), (other, other_wins, other_losses) in itertools.combinations(counts.values(), 2)
        if group == other and wins * other_losses + other_wins * losses > 0
    )


def scores(samples: Sequence[Labelled], pairs: Sequence[Labelled]) -> dict[str, float]:
    """A predictor's scores on one set of prefixes."""
    p = np.array([s.prediction for s in samples], dtype=np.float64)
    y = np.array([s.outcome for s in samples], dtype=np.float64)
    out: dict[str, float] = {
        "prefixes": len({s.prefix for s in samples}),
        "samples": len(samples),
        "success_rate": float(y.mean()) if len(y) else math.nan,
        "mean_prediction": float(p.mean()) if len(p) else math.nan,
        "auc": between_prefix_auc(samples),
        "auc_within_prompt": between_prefix_auc(samples, within_prompt=True),
        "prefix_pairs": informative_prefix_pairs(samples),
        "prefix_pairs_within_prompt": informative_prefix_pairs(samples, within_prompt=True),
        "brier": float(np.mean((p - y) ** 2)) if len(y) else math.nan,
        "calibration_error": calibration_error(p, y) if len(y) else math.nan,
        "pairs": len(pairs),
    }
    mixed_p = np.array([s.prediction for s in pairs], dtype=np.float64)
    mixed_y = np.array([s.outcome for s in pairs], dtype=np.float64)
    out.update(
        mixed_predicted=float(mixed_p.mean()) if len(pairs) else math.nan,
        mixed_observed=float(mixed_y.mean()) if len(pairs) else math.nan,
        mixed_calibration_error=calibration_error(mixed_p, mixed_y) if len(pairs) else math.nan,
        mixed_auc=between_prefix_auc(pairs),
    )
    return out


def noise_ceiling(prefixes: Sequence[DiagnosticPrefix]) -> dict[str, float]:
    """What the true V(H) would score (see the module docstring): the Brier floor, and the
    in-sample AUCs of the n-sample means, an upper estimate."""
    counts = [(sum(prefix.outcomes), len(prefix.outcomes)) for prefix in prefixes]
    variances = [k * (n - k) / (n * (n - 1)) for k, n in counts if n > 1]
    means = [
        Labelled(sum(prefix.outcomes) / len(prefix.outcomes), y, index, prefix.task_id, prefix.depth)
        for index, prefix in enumerate(prefixes)
        for y in prefix.outcomes
    ]
    return {
        "brier_floor": float(np.mean(variances)) if variances else math.nan,
        "auc_in_sample": between_prefix_auc(means),
        "auc_within_prompt_in_sample": between_prefix_auc(means, within_prompt=True),
    }


def samples_of(prefixes: Sequence[DiagnosticPrefix], name: str) -> tuple[list[Labelled], list[Labelled]]:
    return split_half_samples(prefixes) if name == ORACLE else forecast_samples(prefixes, name)


def _scored(prefixes: Sequence[DiagnosticPrefix]) -> dict[str, Any]:
    table: dict[str, Any] = {name: scores(*samples_of(prefixes, name)) for name in PREDICTORS}
    beta = table["beta"]["brier"]
    for row in table.values():
        row["brier_vs_beta"] = row["brier"] / beta if beta > 0 else math.nan
    return {"predictors": table, "ceiling": noise_ceiling(prefixes)}


def predictor_table(prefixes: Sequence[DiagnosticPrefix]) -> dict[str, Any]:
    """Every predictor's scores on all prefixes and on the prefixes of each depth, with the
    noise ceiling of each set."""
    depths = sorted({p.depth for p in prefixes})
    return {
        "overall": _scored(prefixes),
        "by_depth": {depth: _scored([p for p in prefixes if p.depth == depth]) for depth in depths},
    }


# ---------------------------------------------------------------------- reporting


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


OVERALL_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("AUC", lambda r: num(r["auc"])),
    ("AUC within prompt", lambda r: num(r["auc_within_prompt"])),
    ("Brier", lambda r: num(r["brier"])),
    ("Brier / Beta", lambda r: num(r["brier_vs_beta"])),
    ("calibration error", lambda r: num(r["calibration_error"])),
    ("P(mixed) k=2 predicted / observed", lambda r: f"{num(r['mixed_predicted'])} / {num(r['mixed_observed'])}"),
    ("P(mixed) calibration error", lambda r: num(r["mixed_calibration_error"])),
    ("P(mixed) AUC", lambda r: num(r["mixed_auc"])),
)


def overall_markdown(scored: Mapping[str, Any]) -> str:
    rows = scored["predictors"]
    lines = [
        "| predictor | " + " | ".join(title for title, _ in OVERALL_COLUMNS) + " |",
        "|---|" + "---|" * len(OVERALL_COLUMNS),
    ]
    for name in PREDICTORS:
        lines.append(f"| {name} | " + " | ".join(cell(rows[name]) for _, cell in OVERALL_COLUMNS) + " |")
    ceiling, oracle = scored["ceiling"], rows[ORACLE]
    lines.append(
        f"\nThe AUCs order {oracle['prefix_pairs']} pairs of prefixes with different outcomes, "
        f"{oracle['prefix_pairs_within_prompt']} of them within a prompt. "
        f"Noise ceiling (the true V(H)): Brier >= {num(ceiling['brier_floor'])}; AUC between the oracle's "
        f"{num(rows[ORACLE]['auc'])} and {num(ceiling['auc_in_sample'])} (in-sample), within a prompt between "
        f"{num(rows[ORACLE]['auc_within_prompt'])} and {num(ceiling['auc_within_prompt_in_sample'])}."
    )
    return "\n".join(lines)


def by_depth_markdown(by_depth: Mapping[int | str, Mapping[str, Any]], metric: str, pairs: str | None = None) -> str:
    """One row per depth: prefixes, mean Monte-Carlo success (and the count ``pairs`` names),
    then ``metric`` of every predictor."""
    extra = f" {pairs.replace('_', ' ')} |" if pairs else ""
    lines = [
        f"| depth | prefixes | MC success |{extra} " + " | ".join(PREDICTORS) + " |",
        "|---|---|---|" + "---|" * (len(PREDICTORS) + bool(pairs)),
    ]
    for depth, scored in sorted(by_depth.items(), key=lambda item: int(item[0])):
        rows = scored["predictors"]
        first = rows[ORACLE]
        count = f" {first[pairs]} |" if pairs else ""
        cells = " | ".join(num(rows[name][metric]) for name in PREDICTORS)
        lines.append(f"| {depth} | {first['prefixes']} | {num(first['success_rate'])} |{count} {cells} |")
    return "\n".join(lines)
