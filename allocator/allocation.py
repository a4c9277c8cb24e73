"""The allocation mathematics of TRACE: pure functions and two resumable computations, no I/O.

Stage 1 splits a root budget of rollouts over a candidate pool of prompts so that the
expected number of mixed groups, sum_i V_root(v_i, m_i), is maximal. Stage 2 spends the
remaining turn budget on turn-level prefixes by the highest marginal V_pref gain per
turn of cost.

Why stage 1 is a dynamic programme and not plain greedy: a single rollout is never mixed,
so the first unit given to a prompt gains nothing and the gain sequence is not
concave at the start. A marginal-gain greedy never sees the value of opening a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np


def beta_power_means(mean: np.ndarray, strength: np.ndarray | None, max_j: int) -> np.ndarray:
    """``E[V^j]`` for j = 0..max_j, per row, where V ~ Beta(strength * mean, strength * (1 - mean)).

    The rising-factorial ratio prod_{i<j} (a + i) / (a + b + i). Without ``strength`` V is the
    point ``mean`` itself (an infinitely strong belief), and E[V^j] = mean^j.
    """
    mean = np.asarray(mean, dtype=np.float64)[..., None]
    j = np.arange(max_j + 1, dtype=np.float64)
    if strength is None:
        return np.power(mean, j)
    strength = np.asarray(strength, dtype=np.float64)[..., None]
    a = strength * mean
    steps = (a + j[:-1]) / (strength + j[:-1])
    return np.concatenate([np.ones_like(mean * strength), np.cumprod(steps, axis=-1)], axis=-1)


def v_root_table(v: float | np.ndarray, max_m: int, strength: np.ndarray | None = None, min_m: int = 2) -> np.ndarray:
    """``[V_root(v, 0), ..., V_root(v, max_m)]`` as one vector; an array of ``v`` gives one row each.

    V_root(v, m), the probability that ``m`` independent rollouts with success probability ``v``
    are mixed, is 1 - v^m - (1-v)^m. That closed form gives -1 at m = 0 and 0 at m = 1; both
    are 0 here because no group of fewer than two rollouts can be mixed.

    With ``strength`` the success probability is not known but believed Beta(strength v,
    strength (1 - v)) (allocator/posterior.py), and the value is the expected probability
    1 - E[V^m] - E[(1-V)^m]: the rollouts of one prompt share its unknown rate, so they agree
    more often than independent draws at the mean would, and an uncertain prompt is worth less.

    Groups smaller than ``min_m`` are worth 0, so an allocation never makes them: a mixed
    pair counts as much as a mixed group of eight here, but its group baseline is one
    other rollout, and the learner gets less from it.
    """
    v = np.asarray(v, dtype=np.float64)
    table: np.ndarray = 1.0 - beta_power_means(v, strength, max_m) - beta_power_means(1.0 - v, strength, max_m)
    table[..., : min(max(2, min_m), max_m + 1)] = 0.0
    return table


#: What stage 1 maximises (``root_gain_table``); the config field is declared with this type.
RootObjective = Literal["mixed_groups", "informative_rollouts"]
ROOT_OBJECTIVES: tuple[str, ...] = get_args(RootObjective)


def root_gain_table(
    v: np.ndarray, max_m: int, strength: np.ndarray | None, min_m: int, objective: str = "mixed_groups"
) -> np.ndarray:
    """What stage 1 maximises per prompt, for m = 0..max_m rollouts.

    ``mixed_groups``: V_root(v, m), the expected number of mixed groups (TRACE's objective).
    ``informative_rollouts``: m V_root(v, m), the expected number of rollouts whose group-relative
    advantage is non-zero (every rollout of a mixed group has one, none of a unanimous group).
    The first counts a mixed pair as much as a mixed group of eight, so it spreads the budget
    into many small groups; the second counts what reaches the learner's gradient, so a
    larger group on an uncertain prompt is worth more than two pairs on it.
    """
    if objective not in ROOT_OBJECTIVES:
        raise ValueError(f"root objective must be one of {', '.join(ROOT_OBJECTIVES)}; got {objective!r}")
    table = v_root_table(v, max_m, strength, min_m)
    if objective == "informative_rollouts":
        table = table * np.arange(max_m + 1, dtype=np.float64)
    return table


@dataclass
class RootsDP:
    """A knapsack over prompts: ``rows[i][b]`` is the best value with ``b`` units over prompts
    0..i. Adding a prompt is a max over its allowed counts of shifted copies of the previous
    row, O(n * budget * cap) in all; tracing back takes one prompt at a time from the last.

    Both passes are resumable (``add`` and ``trace`` a few prompts at a time) because with
    thousands of candidates and a budget of thousands of rollouts the table is too big for
    one scheduler tick.

    The trace starts at the smallest total reaching the optimum and gives each prompt, from
    the last, the fewest rollouts that reach its row's value: ties leave the later prompts
    out (values [0.5, 0.5] with 2 units give [2, 0]) and results are deterministic.
    """

    gains: np.ndarray  # gains[i, m] = V_root(v_i, m)
    budget: int
    counts: list[int]
    # One array per prompt rather than one n x budget table: a fresh table of tens of MB
    # is advised for huge pages, and faulting those in can stall for milliseconds.
    rows: list[np.ndarray] = field(default_factory=list)
    added: int = 0
    traced: int = 0
    cursor: int = 0  # the units left for the prompts not yet traced

    @classmethod
    def start(
        cls,
        values: Sequence[float],
        budget: int,
        max_per_prompt: int | None = None,
        strengths: Sequence[float] | None = None,
        min_per_prompt: int = 2,
        objective: str = "mixed_groups",
    ) -> RootsDP:
        if budget < 0:
            raise ValueError("budget must be >= 0")
        cap = budget if max_per_prompt is None else min(budget, max_per_prompt)
        n = len(values)
        if n == 0 or budget < 2 or cap < max(2, min_per_prompt):
            # Nothing can be mixed: already finished with all-zero counts.
            return cls(np.zeros((n, 1)), budget, [0] * n, added=n, traced=n)
        strength = None if strengths is None else np.asarray(strengths, dtype=np.float64)
        gains = root_gain_table(np.asarray(values, dtype=np.float64), cap, strength, min_per_prompt, objective)
        return cls(gains, budget, [0] * n)

    @property
    def size(self) -> int:
        return len(self.counts)

    @property
    def cells_per_prompt(self) -> int:
        """Table cells one ``add`` of a prompt computes: what a slice of work is sized by."""
        return (self.budget + 1) * max(1, int(self.gains.shape[1]) - 2)

    @property
    def all_added(self) -> bool:
        return self.added >= self.size

    @property
    def finished(self) -> bool:
        return self.traced >= self.size

    def _previous(self, i: int) -> np.ndarray:
        return self.rows[i - 1] if i else np.zeros(self.budget + 1)

    def add(self, prompts: int) -> None:
        """Add the next ``prompts`` prompts to the table."""
        cap = self.gains.shape[1] - 1
        for i in range(self.added, min(self.size, self.added + max(0, prompts))):
            previous, gains = self._previous(i), self.gains[i]
            row = previous.copy()
            # m = 1 never wins: rows are non-decreasing in b and the gain of one rollout is 0.
            for m in range(2, cap + 1):
                np.maximum(row[m:], previous[:-m] + gains[m], out=row[m:])
            self.rows.append(row)
            self.added = i + 1

    def trace(self, prompts: int) -> None:
        """Fix the counts of the next ``prompts`` prompts, from the last one back."""
        if not self.all_added:
            raise RuntimeError("the root DP has prompts left to add")
        if not self.traced and not self.finished:
            self.cursor = int(np.argmax(self.rows[-1]))  # rows are non-decreasing: the smallest total
        b = self.cursor
        for t in range(self.traced, min(self.size, self.traced + max(0, prompts))):
            i = self.size - 1 - t
            previous, target, gains = self._previous(i), self.rows[i][b], self.gains[i]
            # The same float sums as in add(), so the maximiser compares exactly equal.
            m = next(m for m in range(min(len(gains) - 1, b) + 1) if previous[b - m] + gains[m] == target)
            self.counts[i] = m
            b -= m
            self.rows.pop()  # rows[i], no longer needed: the table shrinks as it is traced
            self.traced = t + 1
        self.cursor = b

    def allocation(self) -> list[int]:
        if not self.finished:
            raise RuntimeError("the root DP has prompts left to trace")
        return list(self.counts)


@dataclass
class PrefixGreedy:
    """The stage-2 greedy over candidates fed in chunks (``add``), then ``allocate``.

    The marginal gain of a candidate's j-th new continuation is q^(a+j-1) (1 - q), with q the
    probability that a new leaf agrees with the existing outcome and a the continuations it
    already had. It decreases in j, so visiting all (candidate, j) moves by decreasing gain
    per turn, and taking each one that still fits, is the greedy: a move skipped for cost
    is followed only by same-cost moves of that candidate, which cannot fit either.
    Ties go to the lower candidate index, then the lower j.

    Why chunks: each chunk's moves are sorted when it is added, so ``allocate`` only merges
    sorted runs; the core adds a chunk per scheduler tick as it scores the candidates.
    """

    size: int = 0
    keys: list[np.ndarray] = field(default_factory=list)  # -gain per turn, each chunk sorted
    rows: list[np.ndarray] = field(default_factory=list)  # the move's candidate, same order
    costs: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        outcome: np.ndarray,
        value: np.ndarray,
        cost: np.ndarray,
        limit: np.ndarray,
        already: np.ndarray,
        rank_cost: np.ndarray | None = None,
        strength: np.ndarray | None = None,
    ) -> None:
        """``cost``: the turns a continuation reserves; ``rank_cost`` (default ``cost``): the
        turns it is expected to take, which orders the moves. With ``strength``, ``value`` is
        the mean of a Beta belief of that strength that already counts every leaf below the
        prefix (so ``already`` should be 0): the j-th new continuation's gain is then
        P(the first j - 1 agree) - P(the first j agree) under that belief."""
        n = len(value)
        offset, self.size = self.size, self.size + n
        if np.any(cost < 1):
            raise ValueError("every continuation costs >= 1 turn")
        width = int(limit.max(initial=0))
        if n == 0 or width < 1:
            return
        agree = outcome * value + (1.0 - outcome) * (1.0 - value)
        j = np.arange(1, width + 1)
        if strength is None:
            gains = np.power(agree[:, None], already[:, None] + j[None, :] - 1) * (1.0 - agree[:, None])
        else:
            all_agree = beta_power_means(agree, strength, width)
            gains = all_agree[:, :-1] - all_agree[:, 1:]
        rows, cols = np.nonzero((j[None, :] <= limit[:, None]) & (gains > 0))
        # np.nonzero lists moves row by row, so a stable sort breaks ties as documented.
        per = cost if rank_cost is None else np.maximum(np.asarray(rank_cost, dtype=np.float64), 1e-9)
        keys = -(gains[rows, cols] / per[rows])
        order = np.argsort(keys, kind="stable")
        self.keys.append(keys[order])
        self.rows.append(rows[order] + offset)
        self.costs.append(cost[rows[order]])

    def allocate(self, budget_turns: int) -> np.ndarray:
        if budget_turns <= 0 or not self.keys:
            return np.zeros(self.size, dtype=np.int64)
        # Merging the chunks' sorted runs stably keeps ties in candidate order (timsort
        # merges runs, so this costs little more than a pass).
        merge = np.argsort(np.concatenate(self.keys), kind="stable")
        rows = np.concatenate(self.rows)[merge]
        move_cost = np.concatenate(self.costs)[merge]
        # Every move before the first one that overflows the budget is taken; after it, the few
        # units left go, in order, to the moves cheap enough to fit (fewer than max cost of them).
        taken = int(np.searchsorted(np.cumsum(move_cost), budget_turns, side="right"))
        picks = [rows[:taken]]
        remaining = budget_turns - int(move_cost[:taken].sum())
        position = taken
        while remaining > 0:
            fits = np.flatnonzero(move_cost[position:] <= remaining)
            if not len(fits):
                break
            position += int(fits[0])
            picks.append(rows[position : position + 1])
            remaining -= int(move_cost[position])
            position += 1
        return np.bincount(np.concatenate(picks), minlength=self.size).astype(np.int64)
