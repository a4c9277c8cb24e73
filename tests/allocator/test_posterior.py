"""The tree-evidence posterior against closed forms, brute force and simulated ground truth."""

import math

import numpy as np
import pytest

from allocator.posterior import (
    DEFAULT_GRID,
    ConcentrationFit,
    Decision,
    beta_binomial_loglik,
    fit_concentration,
    posterior_mean,
    shifted_prior,
)


def test_posterior_mean_is_the_beta_update():
    assert posterior_mean(0.3, 1, 0, 2.0) == pytest.approx((0.6 + 1) / 3)
    assert posterior_mean(0.3, 0, 0, 2.0) == pytest.approx(0.3)
    assert posterior_mean(0.5, 0, 3, 1.0) == pytest.approx(0.5 / 4)
    # Little concentration: the evidence dominates; much: the prior does.
    assert posterior_mean(0.9, 0, 1, 0.05) < 0.05
    assert posterior_mean(0.9, 0, 1, 1000.0) > 0.89


def test_shifted_prior_moves_the_prefix_by_the_prompts_logit_correction():
    assert shifted_prior(0.7, 0.4, 0.4) == pytest.approx(0.7)  # no correction
    assert shifted_prior(0.4, 0.4, 0.9) == pytest.approx(0.9)  # the root itself
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = 1 / (1 + math.exp(-(logit(0.6) + logit(0.2) - logit(0.5))))
    assert shifted_prior(0.6, 0.5, 0.2) == pytest.approx(expected)


def _brute_loglik(kappa, pi, s, f, y, z):
    a, b = kappa * pi + s, kappa * (1 - pi) + f
    lbeta = lambda x, w: math.lgamma(x) + math.lgamma(w) - math.lgamma(x + w)  # noqa: E731
    return lbeta(a + y, b + z) - lbeta(a, b)


def test_beta_binomial_loglik_matches_the_gamma_function_form():
    rows = [(0.3, 1, 0, 2, 0), (0.8, 0, 3, 1, 1), (0.5, 0, 0, 0, 4), (0.01, 2, 2, 3, 0)]
    pi, s, f, y, z = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    for kappa in (0.05, 1.0, 7.5, 200.0):
        got = beta_binomial_loglik(kappa, pi, s, f, y, z)
        expected = sum(_brute_loglik(kappa, *row) for row in rows)
        assert got[0] == pytest.approx(expected, rel=1e-10, abs=1e-10)
    weighted = beta_binomial_loglik(2.0, pi, s, f, y, z, weights=np.array([2.0, 0.0, 0.0, 0.0]))
    assert weighted[0] == pytest.approx(2 * _brute_loglik(2.0, *rows[0]))


def _simulate(true_kappa, n, rng, evidence=1, new=2):
    pi = rng.uniform(0.2, 0.8, n)
    v = rng.beta(true_kappa * pi, true_kappa * (1 - pi))
    old = rng.binomial(evidence, v)
    fresh = rng.binomial(new, v)
    return pi, old, evidence - old, fresh, new - fresh


@pytest.mark.parametrize("true_kappa", [0.5, 2.0, 10.0])
def test_fit_recovers_the_concentration_that_generated_the_leaves(true_kappa):
    rng = np.random.default_rng(0)
    fitted = fit_concentration(*_simulate(true_kappa, 40_000, rng))
    assert abs(math.log(fitted) - math.log(true_kappa)) < 0.45, fitted


def test_fit_goes_to_the_grid_ends_for_polarised_and_for_independent_leaves():
    n = 500
    # New leaves always repeat the old one: a prefix's outcome is settled.
    old = np.tile([1, 0], n // 2)
    settled = fit_concentration(np.full(n, 0.5), old, 1 - old, 2 * old, 2 * (1 - old))
    assert settled == DEFAULT_GRID[0]
    # Every leaf a fair coin whatever the past: the evidence says nothing.
    rng = np.random.default_rng(1)
    pi = np.full(4000, 0.5)
    old = rng.binomial(1, 0.5, 4000)
    new = rng.binomial(2, 0.5, 4000)
    assert fit_concentration(pi, old, 1 - old, new, 2 - new) >= 50.0


def test_concentration_fit_per_depth_with_fallbacks():
    fit = ConcentrationFit(max_depth=3, initial=4.0, min_decisions=10)
    assert fit.concentration(0) == 4.0 and fit.concentration(2) == 4.0
    for _ in range(10):  # depth 2: polarised
        fit.add(Decision(2, 0.5, 1, 0, 2, 0))
        fit.add(Decision(2, 0.5, 0, 1, 0, 2))
    fit.add(Decision(1, 0.5, 1, 0, 0, 0))  # nothing came of it: ignored
    fit.refit()
    assert fit.concentration(2) == DEFAULT_GRID[0]
    assert fit.concentration(1) == DEFAULT_GRID[0]  # too few at depth 1: the pooled prefix fit
    assert fit.concentration(0) == 4.0  # roots never fall back to prefixes
    assert fit.concentration(9) == fit.concentration(3)  # deeper than max_depth: the last depth
    assert 1 not in fit.by_depth


def test_within_group_auc_counts_only_pairs_inside_a_group():
    from allocator.predictor import within_group_auc

    # Group a: 1 success scored 0.9 above 1 failure at 0.2 -> 1 of 1 pair ordered.
    # Group b: successes at 0.1 and 0.3, failures at 0.3 and 0.8 -> pairs (0.1,0.3) wrong,
    # (0.1,0.8) wrong, (0.3,0.3) half, (0.3,0.8) wrong: 0.5 of 4. Cross-group pairs ignored.
    probs = [0.9, 0.2, 0.1, 0.3, 0.3, 0.8, 0.5]
    labels = [1, 0, 1, 1, 0, 0, 1]
    groups = ["a", "a", "b", "b", "b", "b", "c"]
    assert within_group_auc(probs, labels, groups) == pytest.approx((1.0 + 0.5) / 5)
    # One score per group (a per-prompt counter) orders nothing inside a group.
    assert within_group_auc([0.7, 0.7, 0.2, 0.2], [1, 0, 1, 0], ["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert math.isnan(within_group_auc([0.5, 0.6], [1, 1], ["a", "a"]))


def test_the_running_fit_equals_a_fit_over_the_window_after_every_decision():
    """The per-depth sums kept as decisions come and leave the window pick the κ a fresh fit
    over the window's decisions picks, for each depth and pooled over the prefixes."""
    rng = np.random.default_rng(7)
    fit = ConcentrationFit(max_depth=2, window=30, min_decisions=5)
    for index in range(200):
        depth = int(rng.integers(0, 3))
        old = int(rng.integers(0, 3))
        old_successes = int(rng.integers(0, old + 1))
        new = int(rng.integers(1, 4))
        p = float(rng.uniform(0.05, 0.95))
        # Polarised at depth 2, coin-like at depth 0: the fitted κ differ across depths.
        new_successes = int(rng.binomial(new, p if depth < 2 else float(rng.random() < p)))
        fit.add(Decision(depth, p, old_successes, old - old_successes, new_successes, new - new_successes))
        fit.refit()

        def fresh(decisions):
            return fit_concentration(
                [d.prior_mean for d in decisions],
                [d.successes for d in decisions],
                [d.failures for d in decisions],
                [d.new_successes for d in decisions],
                [d.new_failures for d in decisions],
            )

        for d, decisions in fit.by_depth.items():
            assert len(decisions) <= 30
            if len(decisions) >= 5:
                assert fit.concentrations[d] == fresh(list(decisions)), (index, d)
                np.testing.assert_allclose(fit.loglik_sums[d], fit.exact_loglik(decisions), rtol=1e-9, atol=1e-7)
        prefixes = [x for d, ds in fit.by_depth.items() if d >= 1 for x in ds]
        assert fit.pooled == (fresh(prefixes) if len(prefixes) >= 5 else None), index
    assert {len(ds) for ds in fit.by_depth.values()} == {30}
    assert len({fit.concentrations[d] for d in fit.by_depth}) > 1
