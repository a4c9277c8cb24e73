"""The allocation mathematics of TRACE: pure functions, no state, no I/O.

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
from dataclasses import dataclass

import numpy as np


def v_root(v: float, m: int) -> float:
    """Probability that ``m`` independent rollouts with success probability ``v`` are mixed.

    The closed form 1 - v^m - (1-v)^m gives -1 at m = 0 and 0 at m = 1; both are defined
    as 0 here because no group of fewer than two rollouts can be mixed.
    """
    if m < 2:
        return 0.0
    return 1.0 - v**m - (1.0 - v) ** m


def v_root_table(v: float, max_m: int) -> np.ndarray:
    """``[V_root(v, 0), ..., V_root(v, max_m)]`` as one vector."""
    m = np.arange(max_m + 1, dtype=np.float64)
    table = 1.0 - np.power(v, m) - np.power(1.0 - v, m)
    table[: min(2, max_m + 1)] = 0.0
    return table


def v_pref(r: float, v: float, k: int) -> float:
    """Probability that at least one of ``k`` continuations disagrees with outcome ``r``.

    ``r`` is the binary outcome of the existing rollout through the prefix and ``v`` the
    predicted success of the prefix: a new leaf agrees with probability r v + (1-r)(1-v).
    """
    if k <= 0:
        return 0.0
    agree = r * v + (1.0 - r) * (1.0 - v)
    return 1.0 - agree**k


def expected_mixed(values: Sequence[float], counts: Sequence[int]) -> float:
    """sum_i V_root(v_i, m_i): the expected number of mixed groups of an allocation."""
    return float(sum(v_root(v, m) for v, m in zip(values, counts)))


def allocate_roots_dp(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """Exact maximiser of sum_i V_root(v_i, m_i) subject to sum_i m_i <= budget.

    A knapsack over prompts: best[b] is the best value with b units over the prompts seen so
    far. Each prompt is one vectorised max over its allowed counts, O(n * budget * cap).
    Ties keep fewer rollouts on earlier prompts, so results are deterministic.
    """
    if budget < 0:
        raise ValueError("budget must be >= 0")
    n = len(values)
    cap = budget if max_per_prompt is None else min(budget, max_per_prompt)
    if n == 0 or budget < 2 or cap < 2:
        return [0] * n
    best = np.zeros(budget + 1)
    choices = np.zeros((n, budget + 1), dtype=np.int64)
    units = np.arange(budget + 1)
    counts = np.arange(cap + 1)
    # Gather index [b, m] -> b - m; entries with m > b are invalid and masked to -inf.
    source = units[:, None] - counts[None, :]
    invalid = source < 0
    source = np.where(invalid, 0, source)
    for i, v in enumerate(values):
        gains = v_root_table(float(v), cap)
        candidates = best[source] + gains[None, :]
        candidates[invalid] = -np.inf
        choice = np.argmax(candidates, axis=1)
        choices[i] = choice
        best = candidates[units, choice]
    allocation = [0] * n
    b = int(np.argmax(best))  # best is non-decreasing in b; argmax takes the smallest budget reaching it
    for i in range(n - 1, -1, -1):
        m = int(choices[i, b])
        allocation[i] = m
        b -= m
    return allocation


def allocate_roots_plain_greedy(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """One unit at a time to the largest marginal gain. Kept only as the known-bad reference."""
    cap = budget if max_per_prompt is None else max_per_prompt
    counts = [0] * len(values)
    for _ in range(budget):
        gains = [
            (v_root(v, m + 1) - v_root(v, m)) if m < cap else -np.inf for v, m in zip(values, counts)
        ]
        if not gains or max(gains) == -np.inf:
            break
        counts[int(np.argmax(gains))] += 1
    return counts


def allocate_roots_open_or_add(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """Greedy that weighs "open a closed prompt with 2" against spending the same 2 units on
    the best "add one" moves, and takes the first add-one move when that wins.

    Cheaper than the DP for huge pools, not exact: ``tests/allocator`` measures its gap.
    """
    cap = budget if max_per_prompt is None else min(budget, max_per_prompt)
    counts = [0] * len(values)
    remaining = budget
    if cap < 2:
        return counts

    def add_gain(i: int, extra: int = 0) -> float:
        m = counts[i] + extra
        if m >= cap:
            return -np.inf
        return v_root(values[i], m + 1) - v_root(values[i], m)

    while remaining > 0:
        opened = [i for i, m in enumerate(counts) if m >= 2]
        closed = [i for i, m in enumerate(counts) if m == 0]
        best_add = max(opened, key=add_gain, default=None)
        add1 = add_gain(best_add) if best_add is not None else -np.inf
        best_open = max(closed, key=lambda i: v_root(values[i], 2), default=None)
        open_gain = v_root(values[best_open], 2) if best_open is not None and remaining >= 2 else -np.inf
        if add1 == -np.inf and open_gain == -np.inf:
            break
        if open_gain > -np.inf and add1 > -np.inf:
            # Value of the same two units spent on add-one moves: the best first move, then
            # the best second one (the same prompt again or the runner-up).
            second_same = add_gain(best_add, extra=1)
            runner_up = max((add_gain(i) for i in opened if i != best_add), default=-np.inf)
            add2 = add1 + max(second_same, runner_up, 0.0)
            take_open = open_gain > add2
        else:
            take_open = open_gain > -np.inf
        if take_open:
            counts[best_open] = 2
            remaining -= 2
        else:
            counts[best_add] += 1
            remaining -= 1
    return counts


def brute_force_roots(values: Sequence[float], budget: int) -> tuple[float, list[int]]:
    """Exhaustive optimum for small cases: the ground truth the tests hold the DP to."""
    n = len(values)
    best_value, best_counts = -1.0, [0] * n

    def recurse(i: int, left: int, counts: list[int]) -> None:
        nonlocal best_value, best_counts
        if i == n:
            value = expected_mixed(values, counts)
            if value > best_value + 1e-12:
                best_value, best_counts = value, list(counts)
            return
        for m in range(left + 1):
            counts.append(m)
            recurse(i + 1, left - m, counts)
            counts.pop()

    recurse(0, budget, [])
    return best_value, best_counts


@dataclass(frozen=True)
class PrefixCandidate:
    """A prefix the stage-2 greedy may expand.

    ``outcome`` is the binary outcome shared by the existing leaves under the prefix,
    ``value`` the predicted success of the prefix, ``cost`` the turns one continuation may
    take (reserved up front), ``limit`` the most new continuations allowed, ``already`` the
    continuations spent on it in earlier rounds (they all agreed, or it would not be a
    candidate), so the next one is worth V_pref(already+1) - V_pref(already).
    """

    key: str
    outcome: float
    value: float
    cost: int
    limit: int
    already: int = 0


def allocate_prefixes_greedy(candidates: Sequence[PrefixCandidate], budget_turns: int) -> dict[str, int]:
    """Spend ``budget_turns`` one continuation at a time on the best marginal V_pref per turn.

    Returns the number of continuations per candidate key (absent means 0).
    """
    for c in candidates:
        if c.cost < 1:
            raise ValueError(f"candidate {c.key} has cost {c.cost}; every continuation costs >= 1 turn")
    counts = allocate_prefixes_arrays(
        np.array([c.outcome for c in candidates], dtype=np.float64),
        np.array([c.value for c in candidates], dtype=np.float64),
        np.array([c.cost for c in candidates], dtype=np.int64),
        np.array([c.limit for c in candidates], dtype=np.int64),
        np.array([c.already for c in candidates], dtype=np.int64),
        budget_turns,
    )
    return {c.key: int(k) for c, k in zip(candidates, counts) if k > 0}


def allocate_prefixes_arrays(
    outcome: np.ndarray, value: np.ndarray, cost: np.ndarray, limit: np.ndarray, already: np.ndarray, budget_turns: int
) -> np.ndarray:
    """The stage-2 greedy on arrays, one entry per candidate prefix.

    The marginal gain of a candidate's j-th new continuation is q^(a+j-1) (1 - q), with q the
    probability that a new leaf agrees with the existing outcome and a the continuations it
    already had. It decreases in j, so visiting all (candidate, j) moves by decreasing gain
    per turn, and taking each one that still fits, is the greedy: a move skipped for cost
    is followed only by same-cost moves of that candidate, which cannot fit either.
    Ties go to the lower candidate index, then the lower j.
    """
    n = len(value)
    counts = np.zeros(n, dtype=np.int64)
    if n == 0 or budget_turns <= 0:
        return counts
    if np.any(cost < 1):
        raise ValueError("every continuation costs >= 1 turn")
    width = int(limit.max(initial=0))
    if width < 1:
        return counts
    agree = outcome * value + (1.0 - outcome) * (1.0 - value)
    j = np.arange(1, width + 1)
    gains = np.power(agree[:, None], already[:, None] + j[None, :] - 1) * (1.0 - agree[:, None])
    valid = (j[None, :] <= limit[:, None]) & (gains > 0) & (cost[:, None] <= budget_turns)
    rows, cols = np.nonzero(valid)
    if not len(rows):
        return counts
    ratio = gains[rows, cols] / cost[rows]
    order = np.lexsort((cols, rows, -ratio))
    remaining = budget_turns
    smallest = int(cost[rows].min())
    for index in order:
        if remaining < smallest:
            break
        r = rows[index]
        c = int(cost[r])
        if c <= remaining:
            counts[r] += 1
            remaining -= c
    return counts
