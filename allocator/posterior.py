"""Tree evidence for the success predictor: a prefix's own outcomes over a prior shared by all prompts.

A prefix TRACE may expand has been visited: the chain that made it finished, and its
outcome is known before the prefix is scored. So is every outcome a prompt has had. The
shared model (``allocator.predictor.SharedPredictor``) knows neither; it generalises
across prompts from text. This module puts the two together as a two-level Beta model:

    V(root of p) ~ Beta(κ_0 μ_p, κ_0 (1 − μ_p))      μ_p: the shared model's root prediction
    V(H)         ~ Beta(κ_d π_H, κ_d (1 − π_H))      π_H: the prior mean of prefix H at depth d
    each leaf below a node ~ Bernoulli(its V)

so the prediction from s successes and f failures already seen below a node is the
posterior mean (κ π + s) / (κ + s + f) (``posterior_mean``). For a root, (s, f) are the
prompt's earlier outcomes (decayed as the policy moves); for a prefix, the leaves already
under it. π_H is the shared model's prediction for H moved by what the prompt's own
outcomes say about it (``shifted_prior``).

κ_d says how much one observed leaf tells about a prefix at depth d. Prefixes polarise
with depth (a wrong entity committed to rarely recovers), so κ_d falls and a prefix's
own leaves dominate. It is not assumed: ``ConcentrationFit`` finds each κ_d by maximum
likelihood from what happened to continuations the allocator issued, under the
beta-binomial law of their new leaves given the evidence at the time of the decision.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: The concentrations ConcentrationFit chooses from (log-spaced).
DEFAULT_GRID = tuple(float(k) for k in np.geomspace(0.05, 200.0, 41))
_EPS = 1e-6


def posterior_mean(prior_mean: float, successes: float, failures: float, concentration: float) -> float:
    """E[V | s, f] under V ~ Beta(κ π, κ (1 − π)): (κ π + s) / (κ + s + f)."""
    prior_mean = min(1.0 - _EPS, max(_EPS, prior_mean))
    return (concentration * prior_mean + successes) / (concentration + successes + failures)


def _logit(p: float) -> float:
    p = min(1.0 - _EPS, max(_EPS, p))
    return math.log(p / (1.0 - p))


def shifted_prior(shared_prefix: float, shared_root: float, prompt_posterior: float) -> float:
    """The shared prediction for a prefix, moved in logit space by the prompt's correction.

    The shared model sees the text of H; the prompt's outcomes say how far this prompt sits
    from what the shared model expects of its root. Adding that offset carries a hard (or
    easy) prompt's evidence to each of its prefixes.
    """
    z = _logit(shared_prefix) + _logit(prompt_posterior) - _logit(shared_root)
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def beta_binomial_loglik(
    concentration: float | np.ndarray,
    prior_mean: np.ndarray,
    successes: np.ndarray,
    failures: np.ndarray,
    new_successes: np.ndarray,
    new_failures: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Log-likelihood, up to terms free of κ, of new leaves given the evidence, per κ.

    Each row is one decision: prior mean π, the s and f seen before it, and the y and n − y
    that followed. Given them, the new leaves are beta-binomial with α = κ π + s and
    β = κ (1 − π) + f; the binomial coefficient does not depend on κ and is left out.
    """
    kappa = np.atleast_1d(np.asarray(concentration, dtype=np.float64))[:, None]
    pi = np.clip(np.asarray(prior_mean, dtype=np.float64), _EPS, 1.0 - _EPS)[None, :]
    alpha = kappa * pi + np.asarray(successes, dtype=np.float64)[None, :]
    beta = kappa * (1.0 - pi) + np.asarray(failures, dtype=np.float64)[None, :]
    y = np.asarray(new_successes, dtype=np.int64)[None, :]
    z = np.asarray(new_failures, dtype=np.int64)[None, :]
    # B(α + y, β + z) / B(α, β) for whole y, z: the ratio of rising factorials.
    rows = _log_rising(alpha, y) + _log_rising(beta, z) - _log_rising(alpha + beta, y + z)
    w = np.ones(rows.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    loglik: np.ndarray = rows @ w
    return loglik


def _log_rising(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """log of x (x + 1) ... (x + c − 1), elementwise, for whole counts c ≥ 0."""
    out = np.zeros(np.broadcast_shapes(x.shape, counts.shape))
    for i in range(int(counts.max(initial=0))):
        out += np.where(counts > i, np.log(x + i), 0.0)
    return out


def fit_concentration(
    prior_mean: Sequence[float],
    successes: Sequence[float],
    failures: Sequence[float],
    new_successes: Sequence[float],
    new_failures: Sequence[float],
    grid: Sequence[float] = DEFAULT_GRID,
    weights: Sequence[float] | None = None,
) -> float:
    """The κ on ``grid`` that makes the observed new leaves most likely (ties: the larger κ,
    i.e. the more cautious about a single leaf)."""
    if not len(prior_mean):
        raise ValueError("fit_concentration needs at least one decision")
    loglik = beta_binomial_loglik(
        np.asarray(grid),
        np.asarray(prior_mean),
        np.asarray(successes),
        np.asarray(failures),
        np.asarray(new_successes),
        np.asarray(new_failures),
        None if weights is None else np.asarray(weights),
    )
    return best_on_grid(loglik, grid)


def best_on_grid(loglik: np.ndarray, grid: Sequence[float]) -> float:
    """The κ of ``grid`` with the largest log-likelihood; of near-ties, the larger κ."""
    best = np.flatnonzero(loglik >= loglik.max() - 1e-9)
    return float(np.asarray(grid)[best[-1]])


def decision_loglik(decision: Decision, grid: Sequence[float]) -> np.ndarray:
    """One decision's log-likelihood on every κ of ``grid`` (a row of ``beta_binomial_loglik``)."""
    return beta_binomial_loglik(
        np.asarray(grid),
        np.asarray([decision.prior_mean]),
        np.asarray([decision.successes]),
        np.asarray([decision.failures]),
        np.asarray([decision.new_successes]),
        np.asarray([decision.new_failures]),
    )


@dataclass(frozen=True)
class Decision:
    """What was known when continuations from a node were issued, and what came of them."""

    depth: int
    prior_mean: float
    successes: float
    failures: float
    new_successes: int
    new_failures: int


@dataclass
class ConcentrationFit:
    """Per-depth κ fitted on a window of recent decisions; a depth with too few falls back
    to the fit over all prefixes (depth ≥ 1), and before any data to ``initial``.

    The log-likelihood is a sum over decisions, so each depth keeps the sum over its window
    on the whole grid, adding a decision's row when it arrives and taking the row of the one
    it pushes out of the window away: ``refit`` is then an argmax per depth, whatever the
    window holds, instead of a pass over every decision (which, run at every step's close,
    took 0.2 s of the allocator's schedule() once the windows filled). Every ``window``
    additions a depth's sum is recomputed from its decisions, so rounding cannot drift.
    """

    max_depth: int
    initial: float = 4.0
    window: int = 4096
    min_decisions: int = 40
    grid: tuple[float, ...] = DEFAULT_GRID
    by_depth: dict[int, deque[Decision]] = field(default_factory=dict)
    concentrations: dict[int, float] = field(default_factory=dict)
    pooled: float | None = None
    loglik_sums: dict[int, np.ndarray] = field(default_factory=dict)
    _adds_since_exact: dict[int, int] = field(default_factory=dict)

    def add(self, decision: Decision) -> None:
        if decision.new_successes + decision.new_failures < 1:
            return
        depth = min(decision.depth, self.max_depth)
        decisions = self.by_depth.setdefault(depth, deque(maxlen=self.window))
        total = self.loglik_sums.setdefault(depth, np.zeros(len(self.grid)))
        if len(decisions) == self.window:
            total -= decision_loglik(decisions[0], self.grid)
        decisions.append(decision)
        total += decision_loglik(decision, self.grid)
        self._adds_since_exact[depth] = self._adds_since_exact.get(depth, 0) + 1
        if self._adds_since_exact[depth] >= self.window:
            self.loglik_sums[depth] = self.exact_loglik(decisions)
            self._adds_since_exact[depth] = 0

    def exact_loglik(self, decisions: Sequence[Decision]) -> np.ndarray:
        """The log-likelihood of ``decisions`` on the grid, summed afresh."""
        return beta_binomial_loglik(
            np.asarray(self.grid),
            np.asarray([d.prior_mean for d in decisions]),
            np.asarray([d.successes for d in decisions]),
            np.asarray([d.failures for d in decisions]),
            np.asarray([d.new_successes for d in decisions]),
            np.asarray([d.new_failures for d in decisions]),
        )

    def refit(self) -> None:
        prefix_depths = [depth for depth in self.by_depth if depth >= 1]
        prefix_count = sum(len(self.by_depth[depth]) for depth in prefix_depths)
        if prefix_count >= self.min_decisions:
            self.pooled = best_on_grid(np.sum([self.loglik_sums[depth] for depth in prefix_depths], axis=0), self.grid)
        else:
            self.pooled = None
        self.concentrations = {
            depth: best_on_grid(self.loglik_sums[depth], self.grid)
            for depth, decisions in self.by_depth.items()
            if len(decisions) >= self.min_decisions
        }

    def concentration(self, depth: int) -> float:
        depth = min(depth, self.max_depth)
        if depth in self.concentrations:
            return self.concentrations[depth]
        if depth >= 1 and self.pooled is not None:
            return self.pooled
        return self.initial
