"""Reference forms of the allocator's mathematics that the tests hold its production code to.

The allocator runs resumable computations (``RootsDP``, ``PrefixGreedy``) and builds prefix
features incrementally; here are the scalar closed forms (V_root, V_pref), the objective,
the one-call forms of the same computations, an exhaustive optimum, the marginal-gain
greedies the DP beats, and a from-scratch featurizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from allocator.allocation import PrefixGreedy, RootsDP
from allocator.predictor import (
    PredictorConfig,
    SparseFeatures,
    features_from_counts,
    merge_counts,
    text_counts,
    turn_counts,
    word_count,
)


def v_root(v: float, m: int) -> float:
    """Probability that ``m`` independent rollouts with success probability ``v`` are mixed.

    The closed form 1 - v^m - (1-v)^m gives -1 at m = 0 and 0 at m = 1; both are defined
    as 0 here because no group of fewer than two rollouts can be mixed.
    """
    if m < 2:
        return 0.0
    return 1.0 - v**m - (1.0 - v) ** m


def expected_mixed(values: Sequence[float], counts: Sequence[int]) -> float:
    """sum_i V_root(v_i, m_i): the expected number of mixed groups of an allocation."""
    return float(sum(v_root(v, m) for v, m in zip(values, counts, strict=True)))


def allocate_roots_dp(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """Exact maximiser of sum_i V_root(v_i, m_i) subject to sum_i m_i <= budget (see RootsDP)."""
    dp = RootsDP.start(values, budget, max_per_prompt)
    dp.add(len(values))
    dp.trace(len(values))
    return dp.allocation()


def brute_force_roots(values: Sequence[float], budget: int, min_per_prompt: int = 2) -> tuple[float, list[int]]:
    """Exhaustive optimum for small cases: the ground truth the DP is held to. Groups of 1 up
    to ``min_per_prompt - 1`` rollouts are not allowed."""
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
            if 0 < m < min_per_prompt:
                continue
            counts.append(m)
            recurse(i + 1, left - m, counts)
            counts.pop()

    recurse(0, budget, [])
    return best_value, best_counts


def allocate_roots_plain_greedy(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """One unit at a time to the largest marginal gain. The known-bad reference the DP beats."""
    cap = budget if max_per_prompt is None else max_per_prompt
    counts = [0] * len(values)
    for _ in range(budget):
        gains = [(v_root(v, m + 1) - v_root(v, m)) if m < cap else -np.inf for v, m in zip(values, counts, strict=True)]
        if not gains or max(gains) == -np.inf:
            break
        counts[int(np.argmax(gains))] += 1
    return counts


def allocate_roots_open_or_add(values: Sequence[float], budget: int, max_per_prompt: int | None = None) -> list[int]:
    """Greedy that weighs "open a closed prompt with 2" against spending the same 2 units on
    the best "add one" moves, and takes the first add-one move when that wins.

    Cheaper than the DP for huge pools, not exact: the tests measure its gap.
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


def oracle_expected_mixed(p0: Sequence[float], budget: int, max_per_prompt: int) -> float:
    """Expected mixed groups of the DP allocation computed from the true probabilities."""
    return expected_mixed(p0, allocate_roots_dp(p0, budget, max_per_prompt))


def uniform_expected_mixed(p0: Sequence[float], group_size: int, prompts: int) -> float:
    """Expected mixed groups of ``prompts`` prompts drawn at random from ``p0``, ``group_size`` each."""
    return prompts * float(np.mean([v_root(p, group_size) for p in p0]))


def v_pref(r: float, v: float, k: int) -> float:
    """Probability that at least one of ``k`` continuations disagrees with outcome ``r``.

    ``r`` is the binary outcome of the existing rollout through the prefix and ``v`` the
    predicted success of the prefix: a new leaf agrees with probability r v + (1-r)(1-v).
    """
    if k <= 0:
        return 0.0
    agree = r * v + (1.0 - r) * (1.0 - v)
    return 1.0 - agree**k


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


def allocate_prefixes_arrays(
    outcome: np.ndarray, value: np.ndarray, cost: np.ndarray, limit: np.ndarray, already: np.ndarray, budget_turns: int
) -> np.ndarray:
    """The stage-2 greedy on arrays, one entry per candidate prefix: continuations each."""
    greedy = PrefixGreedy()
    greedy.add(outcome, value, cost, limit, already)
    return greedy.allocate(budget_turns)


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
    return {c.key: int(k) for c, k in zip(candidates, counts, strict=True) if k > 0}


@dataclass(frozen=True)
class PrefixView:
    """What the predictor sees of a prefix H = (prompt, turn 1..t)."""

    prompt_text: str
    turns: tuple[tuple[str, str], ...]  # (action text, observation text)
    depth: int
    max_turns: int
    # The environment's progress score after the last turn and after the one before, if any.
    env_score: float | None = None
    previous_env_score: float | None = None


def featurize(view: PrefixView, config: PredictorConfig) -> SparseFeatures:
    """Features of a prefix from scratch; the core builds the same thing incrementally."""
    counts = text_counts("p", view.prompt_text, config)
    for action, observation in view.turns:
        counts = merge_counts(counts, turn_counts(action, observation, config))
    return features_from_counts(
        counts,
        depth=view.depth,
        max_turns=view.max_turns,
        tool_calls=sum(1 for _, o in view.turns if o.strip()),
        last_observation=view.turns[-1][1] if view.turns else "",
        prompt_words=word_count(view.prompt_text),
        env_score=view.env_score,
        previous_env_score=view.previous_env_score,
        config=config,
    )
