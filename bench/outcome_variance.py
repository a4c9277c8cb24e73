"""Where a task's learnable signal is, from Monte-Carlo ground truth (pure functions).

A group-relative advantage learns only from outcomes that differ between rollouts of the
same prompt or prefix. Split the outcome variance of a leaf, V(1 - V) at the population mean,
into what lies between prefixes (which prefix it is decides the outcome) and what lies within
one, E[V (1 - V)]: only the second is signal, and only a mixed group shows it.

`tracerl bench predictor` continues each diagnostic prefix n times (k successes), which
gives unbiased estimates of what a group of m rollouts of that prefix would do: C(k, m) /
C(n, m) is unbiased for V^m (the chance that m draws without replacement from the n all
succeed equals E[V^m] under the binomial), so

    P(m rollouts all agree) = [C(k, m) + C(n - k, m)] / C(n, m),   m <= n,

and k (n - k) / (n (n - 1)) is unbiased for V (1 - V). Averaged over prefixes drawn at
random, they say how many rollouts a group of m on a random prefix turns into signal: its
rollouts are informative exactly when it is mixed, so informative rollouts per rollout are
P(mixed | m), and mixed groups per rollout P(mixed | m) / m. A planner that counts mixed
groups and a learner that needs informative rollouts can then disagree about m.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def within_variance(successes: int, samples: int) -> float:
    """Unbiased estimate of V (1 - V) from ``successes`` of ``samples`` Bernoulli(V) draws."""
    if samples < 2 or not 0 <= successes <= samples:
        raise ValueError(f"need 0 <= successes <= samples and samples >= 2, got {successes}/{samples}")
    return successes * (samples - successes) / (samples * (samples - 1))


def all_agree_probability(successes: int, samples: int, group: int) -> float:
    """Unbiased estimate of V^m + (1 - V)^m, the chance that a group of m rollouts is unanimous."""
    if not 1 <= group <= samples or not 0 <= successes <= samples:
        raise ValueError(
            f"need 1 <= group <= samples and 0 <= successes <= samples, got {group}, {successes}/{samples}"
        )
    total = math.comb(samples, group)
    return (math.comb(successes, group) + math.comb(samples - successes, group)) / total


@dataclass(frozen=True)
class GroupYield:
    """What a group of ``group`` rollouts on a random prefix yields, per rollout spent."""

    group: int
    mixed_probability: float  # = informative rollouts per rollout
    mixed_groups_per_rollout: float


@dataclass(frozen=True)
class DepthVariance:
    depth: int
    prefixes: int
    mean_success: float
    total_variance: float  # V̄ (1 - V̄): a leaf's outcome variance at this depth
    within_variance: float  # E[V (1 - V)]: the part rollouts of one prefix can disagree on
    yields: tuple[GroupYield, ...]

    @property
    def within_share(self) -> float:
        """The share of the outcome variance that lies within a prefix (nan when there is none)."""
        return self.within_variance / self.total_variance if self.total_variance > 0 else math.nan


def group_yields(counts: Sequence[int], samples: int, groups: Iterable[int]) -> tuple[GroupYield, ...]:
    """Mean over prefixes (``counts``: successes of each, out of ``samples``) of what a group of
    each size in ``groups`` yields."""
    if not counts:
        raise ValueError("no prefixes")
    out = []
    for m in groups:
        mixed = sum(1.0 - all_agree_probability(k, samples, m) for k in counts) / len(counts)
        out.append(GroupYield(m, mixed, mixed / m))
    return tuple(out)


def variance_by_depth(
    prefixes: Iterable[Mapping[str, object]], groups: Sequence[int] = (2, 3, 4, 8)
) -> list[DepthVariance]:
    """Per depth, from records ``{"depth": d, "outcomes": [0/1, ...]}`` (every record of a depth
    with the same number of outcomes): the split of the outcome variance and group yields."""
    by_depth: dict[int, list[Sequence[int]]] = {}
    for record in prefixes:
        outcomes = record["outcomes"]
        if not isinstance(outcomes, Sequence) or not outcomes:
            raise ValueError(f"a prefix record needs a non-empty list of outcomes, got {outcomes!r}")
        by_depth.setdefault(int(record["depth"]), []).append(outcomes)  # type: ignore[call-overload]
    rows = []
    for depth, samples_list in sorted(by_depth.items()):
        sizes = {len(o) for o in samples_list}
        if len(sizes) != 1:
            raise ValueError(f"depth {depth}: prefixes were continued a different number of times: {sorted(sizes)}")
        (n,) = sizes
        counts = [int(sum(o)) for o in samples_list]
        mean = sum(counts) / (n * len(counts))
        rows.append(
            DepthVariance(
                depth=depth,
                prefixes=len(counts),
                mean_success=mean,
                total_variance=mean * (1.0 - mean),
                within_variance=sum(within_variance(k, n) for k in counts) / len(counts),
                yields=group_yields(counts, n, [m for m in groups if m <= n]),
            )
        )
    return rows
