"""The learning benchmark's statistics, as pure functions.

- A run's held-out curve is scored by its **trapezoid mean** over policy versions: the area
  under the piecewise-linear curve through its checkpoints divided by the versions it spans.
  With checkpoints every k versions that is the plain mean with half weight on the first and
  last points, and it stays a time average when the last interval is shorter (a run whose
  step count is not a multiple of k).
- Strategies are compared on **paired seeds**: seed index s of every strategy starts from the
  same model with the same run seed and prompt draws, so the per-seed difference removes
  what the seeds share. Only seeds both strategies completed are paired.
- The **standard error** of a mean of n values is the sample standard deviation (n - 1
  denominator) over sqrt(n). It is undefined (nan) for fewer than two values, never 0.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def curve_mean(points: Sequence[tuple[float, float]]) -> float:
    """Trapezoid mean of ``(version, value)`` points over the versions they span; nan when empty.

    A single point, or points all at one version, is its own mean."""
    ordered = sorted(points)
    if not ordered:
        return math.nan
    span = ordered[-1][0] - ordered[0][0]
    if span == 0:
        return statistics.fmean(value for _, value in ordered)
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(ordered))
    return area / span


@dataclass(frozen=True)
class MeanSE:
    mean: float
    se: float
    n: int


def mean_se(values: Sequence[float]) -> MeanSE:
    """Mean and standard error; the mean is nan without values and the SE nan below two."""
    n = len(values)
    if n == 0:
        return MeanSE(math.nan, math.nan, 0)
    if n == 1:
        return MeanSE(float(values[0]), math.nan, 1)
    return MeanSE(statistics.fmean(values), statistics.stdev(values) / math.sqrt(n), n)


def paired_differences(ours: Mapping[int, float], theirs: Mapping[int, float]) -> dict[int, float]:
    """``ours[s] - theirs[s]`` for every seed index s both have, in seed order."""
    return {seed: ours[seed] - theirs[seed] for seed in sorted(set(ours) & set(theirs))}


@dataclass(frozen=True)
class PairedDifference:
    mean: float
    se: float
    seeds: tuple[int, ...]


def paired_difference(ours: Mapping[int, float], theirs: Mapping[int, float]) -> PairedDifference:
    """Mean and standard error of the per-seed difference, over the seeds both have."""
    diffs = paired_differences(ours, theirs)
    summary = mean_se(list(diffs.values()))
    return PairedDifference(summary.mean, summary.se, tuple(diffs))
