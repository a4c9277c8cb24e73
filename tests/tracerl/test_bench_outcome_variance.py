"""bench/outcome_variance.py against closed-form answers."""

from __future__ import annotations

import math

import pytest

from bench.outcome_variance import all_agree_probability, group_yields, variance_by_depth, within_variance


def binomial_expectation(samples: int, v: float, estimate) -> float:
    return sum(math.comb(samples, k) * v**k * (1 - v) ** (samples - k) * estimate(k) for k in range(samples + 1))


@pytest.mark.parametrize("v", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("samples", [2, 5, 16])
def test_the_within_variance_estimate_is_unbiased(v: float, samples: int) -> None:
    expected = binomial_expectation(samples, v, lambda k: within_variance(k, samples))
    assert expected == pytest.approx(v * (1 - v), abs=1e-12)


@pytest.mark.parametrize("v", [0.0, 0.2, 0.5, 0.83, 1.0])
@pytest.mark.parametrize(("samples", "group"), [(2, 2), (16, 2), (16, 3), (16, 8), (16, 16), (5, 1)])
def test_the_all_agree_estimate_is_unbiased(v: float, samples: int, group: int) -> None:
    expected = binomial_expectation(samples, v, lambda k: all_agree_probability(k, samples, group))
    assert expected == pytest.approx(v**group + (1 - v) ** group, abs=1e-12)


def test_hand_computed_values() -> None:
    assert within_variance(1, 2) == 0.5
    assert within_variance(0, 16) == 0.0
    assert all_agree_probability(0, 16, 4) == 1.0
    assert all_agree_probability(8, 16, 2) == pytest.approx(56 / 120)
    # A single rollout always agrees with itself.
    assert all_agree_probability(7, 16, 1) == 1.0


def test_group_yields_of_two_prefixes() -> None:
    # Prefix A: 2 of 4 succeed; prefix B: 4 of 4. A pair on A is mixed with chance 4/6.
    (pair, quad) = group_yields([2, 4], 4, [2, 4])
    assert pair.mixed_probability == pytest.approx((4 / 6 + 0) / 2)
    assert pair.mixed_groups_per_rollout == pytest.approx(1 / 6)
    assert quad.mixed_probability == pytest.approx(0.5)  # A's only group of 4 is mixed
    assert quad.mixed_groups_per_rollout == pytest.approx(0.125)


def test_variance_by_depth_splits_between_and_within() -> None:
    rows = variance_by_depth(
        [
            {"depth": 0, "outcomes": [1, 1, 0, 0]},
            {"depth": 0, "outcomes": [1, 1, 1, 1]},
            {"depth": 1, "outcomes": [0, 0, 0, 0]},
            {"depth": 1, "outcomes": [1, 1, 1, 1]},
        ],
        groups=(2, 4, 8),
    )
    root, first = rows
    assert (root.depth, root.prefixes, root.mean_success) == (0, 2, 0.75)
    assert root.total_variance == pytest.approx(0.1875)
    assert root.within_variance == pytest.approx((4 / 12) / 2)
    assert root.within_share == pytest.approx((1 / 6) / 0.1875)
    assert [y.group for y in root.yields] == [2, 4]  # 8 > the 4 samples: not estimable
    # Depth 1: every prefix decided, all variance between prefixes.
    assert first.total_variance == 0.25 and first.within_variance == 0.0 and first.within_share == 0.0


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValueError, match="different number"):
        variance_by_depth([{"depth": 0, "outcomes": [1, 0]}, {"depth": 0, "outcomes": [1, 0, 1]}])
    with pytest.raises(ValueError, match="non-empty"):
        variance_by_depth([{"depth": 0, "outcomes": []}])
    with pytest.raises(ValueError):
        within_variance(3, 2)
    with pytest.raises(ValueError):
        all_agree_probability(1, 4, 5)
