"""The shared success predictor Ṽψ(H): one model for every prompt, trained online.

Model: logistic regression on hashed text features of the prefix history plus a few
structured features, with a diagonal Gaussian posterior over the weights (the online
Bayesian logistic regression of Chapelle and Li, 2011). Each update finds the MAP weights
under the current posterior as prior by a few diagonal Newton steps, then adds the
data's curvature to the posterior precision. The posterior variance gives the
uncertainty of a prediction at no extra cost.

Why this model: it is cheap enough to refit after every batch of finished trees on two
CPU cores, it handles soft targets (backup values in [0, 1]) directly, and its
per-weight precision lets old evidence fade (``forgetting``) as the policy moves.

Training targets are backup values V̂ weighted by ``decay ** version_lag`` and dropped
when the lag exceeds the staleness bound: evidence about an old policy counts less.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import numpy.typing as npt
from msgspec import Meta

from tracerl.config import AtLeast0, AtLeast1, Config, Fraction, Positive

_WORD = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
_ERROR = re.compile(r"error|invalid|not found|no result|unknown|malformed", re.IGNORECASE)


class PredictorConfig(Config, frozen=True):
    hash_bits: Annotated[int, Meta(ge=8, le=22)] = 14
    prior_precision: Positive = 1.0
    # Posterior precision is multiplied by this before each update so that the model keeps
    # adapting to the moving policy; 1.0 means never forget.
    forgetting: Fraction = 0.97
    newton_steps: AtLeast1 = 12
    # Sample weight decay ** version_lag; samples lagging by more than max_lag are dropped.
    decay: Fraction = 0.7
    max_lag: AtLeast0 = 4
    use_bigrams: bool = True
    # Read the environment's progress score (TurnNode.env_score: e.g. the share of the needed
    # evidence found) when the environment has one. Off, the model sees text and structure only.
    use_env_score: bool = True
    # How many leaves' worth of weight a prior mean has before concentrations are fitted
    # (allocator/posterior.py fits them per depth from the allocator's own decisions).
    initial_concentration: Positive = 4.0


@dataclass(frozen=True)
class PromptStats:
    """Running outcome counts of one prompt (the baseline's whole state, our features' part)."""

    successes: float = 0.0
    failures: float = 0.0

    def posterior_mean(self, a0: float = 1.0, b0: float = 1.0) -> float:
        return (self.successes + a0) / (self.successes + self.failures + a0 + b0)


@dataclass(frozen=True)
class SparseFeatures:
    indices: np.ndarray  # int64, unique
    values: np.ndarray  # float64


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_count(text: str) -> int:
    """Words and punctuation marks as the hashed features count them."""
    return len(_tokens(text))


# A small cache: a hit saves about a tenth of a microsecond over crc32 itself, while each
# entry costs about 200 bytes, and the keys are every word and bigram of every action and
# observation, so 2^17 of them would fill, over many hours, to about 28 MB.
@functools.lru_cache(maxsize=1 << 13)
def _hash(key: str, bits: int) -> int:
    return zlib.crc32(key.encode()) & ((1 << bits) - 1)


# The prompt's own outcomes are not features: allocator/posterior.py adds them as evidence
# over this model's prediction, which stays a prior shared by all prompts.
STRUCTURED = (
    "bias",
    "depth",
    "tool_calls",
    "last_obs_len",
    "last_obs_error",
    "prompt_words",
    "env_score",
    "env_score_gain",
)


def text_counts(namespace: str, text: str, config: PredictorConfig) -> dict[int, float]:
    """Hashed word (and bigram) counts of one text under its own namespace."""
    counts: dict[int, float] = {}
    words = _tokens(text)
    keys = [f"{namespace}:{w}" for w in words]
    if config.use_bigrams:
        keys += [f"{namespace}:{a} {b}" for a, b in itertools.pairwise(words)]
    for key in keys:
        h = _hash(key, config.hash_bits)
        counts[h] = counts.get(h, 0.0) + 1.0
    return counts


def turn_counts(action: str, observation: str, config: PredictorConfig) -> dict[int, float]:
    return merge_counts(text_counts("a", action, config), text_counts("o", observation, config))


def merge_counts(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def features_from_counts(
    counts: dict[int, float],
    *,
    depth: int,
    max_turns: int,
    tool_calls: int,
    last_observation: str,
    prompt_words: int,
    config: PredictorConfig,
    env_score: float | None = None,
    previous_env_score: float | None = None,
) -> SparseFeatures:
    """Hashed counts of prompt, actions and observations (``counts``), log-scaled and
    normalised, plus the structured features in the slots after the hashed block.

    ``prompt_words`` is there because a hashed count normalised over a whole prompt says
    little about its length, and length is how harder questions often show (one more hop
    is one more clause). The progress score enters only when the config asks for it and the
    environment gives one; its gain over the previous turn says whether the turn helped.
    """
    indices = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    # log1p keeps a word repeated along a long prefix from dominating the logit
    values = np.log1p(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    norm = math.sqrt(float(values @ values)) or 1.0
    values = values / norm

    last_obs = last_observation
    score = env_score if config.use_env_score and env_score is not None else None
    gain = score - (previous_env_score or 0.0) if score is not None else 0.0
    structured = np.array(
        [
            1.0,
            depth / max(1, max_turns),
            tool_calls / max(1, max_turns),
            math.log1p(len(_tokens(last_obs))) / 5.0,
            1.0 if _ERROR.search(last_obs) else 0.0,
            math.log1p(prompt_words) / 3.0,
            score if score is not None else 0.0,
            gain,
        ]
    )
    base = 1 << config.hash_bits
    return SparseFeatures(
        np.concatenate([indices, base + np.arange(len(structured))]),
        np.concatenate([values, structured]),
    )


@dataclass(frozen=True)
class Prediction:
    probability: float
    logit_std: float


@dataclass
class SharedPredictor:
    """Mutable model state; deterministic given the sequence of updates."""

    config: PredictorConfig = field(default_factory=PredictorConfig)
    mean: np.ndarray = field(init=False)
    precision: np.ndarray = field(init=False)
    revision: int = field(init=False, default=0)
    samples_seen: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        dim = (1 << self.config.hash_bits) + len(STRUCTURED)
        self.mean = np.zeros(dim)
        self.precision = np.full(dim, self.config.prior_precision)

    def sample_weight(self, version_lag: int) -> float:
        """decay ** lag, and 0 beyond the staleness bound."""
        if version_lag > self.config.max_lag:
            return 0.0
        return self.config.decay ** max(0, version_lag)

    def predict_many(self, batch: Sequence[SparseFeatures]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (probit-corrected for posterior variance) and logit std devs."""
        if not batch:
            return np.zeros(0), np.zeros(0)
        rows, cols, vals = _stack(batch)
        logits = np.bincount(rows, weights=self.mean[cols] * vals, minlength=len(batch))
        variance = np.bincount(rows, weights=vals * vals / self.precision[cols], minlength=len(batch))
        probs = _sigmoid(logits / np.sqrt(1.0 + math.pi * variance / 8.0))
        return probs, np.sqrt(variance)

    def predict(self, features: SparseFeatures) -> Prediction:
        p, s = self.predict_many([features])
        return Prediction(float(p[0]), float(s[0]))

    def update(self, batch: Sequence[SparseFeatures], targets: Sequence[float], weights: Sequence[float]) -> None:
        """One online Bayesian update on soft targets in [0, 1] with per-sample weights."""
        keep = [i for i, w in enumerate(weights) if w > 0]
        if not keep:
            return
        batch = [batch[i] for i in keep]
        t = np.clip(np.asarray([targets[i] for i in keep], dtype=np.float64), 0.0, 1.0)
        w = np.asarray([weights[i] for i in keep], dtype=np.float64)
        rows, cols, vals = _stack(batch)
        self.precision = np.maximum(self.precision * self.config.forgetting, self.config.prior_precision)
        touched = np.unique(cols)
        prior_mean = self.mean[touched]
        prior_prec = self.precision[touched]
        local = np.searchsorted(touched, cols)
        theta = prior_mean.copy()
        n = len(batch)

        def objective(candidate: np.ndarray) -> float:
            z = np.bincount(rows, weights=candidate[local] * vals, minlength=n)
            # weighted cross-entropy with soft targets, written stably via logaddexp
            ce = w * (np.logaddexp(0.0, z) - t * z)
            return float(ce.sum() + 0.5 * np.sum(prior_prec * (candidate - prior_mean) ** 2))

        current = objective(theta)
        for _ in range(self.config.newton_steps):
            logits = np.bincount(rows, weights=theta[local] * vals, minlength=n)
            p = _sigmoid(logits)
            residual = w * (p - t)
            curvature = w * p * (1.0 - p)
            grad = np.bincount(local, weights=residual[rows] * vals, minlength=len(touched))
            grad += prior_prec * (theta - prior_mean)
            hess = np.bincount(local, weights=curvature[rows] * vals * vals, minlength=len(touched)) + prior_prec
            direction = -grad / hess
            # A diagonal Newton step ignores correlated features and can overshoot; halve it
            # until the objective decreases, which makes every step a descent step.
            step = 1.0
            while step > 1e-4:
                trial = theta + step * direction
                value = objective(trial)
                if value < current:
                    theta, current = trial, value
                    break
                step *= 0.5
            else:
                break
        logits = np.bincount(rows, weights=theta[local] * vals, minlength=n)
        p = _sigmoid(logits)
        curvature = w * p * (1.0 - p)
        self.mean[touched] = theta
        self.precision[touched] = prior_prec + np.bincount(
            local, weights=curvature[rows] * vals * vals, minlength=len(touched)
        )
        self.revision += 1
        self.samples_seen += n


@dataclass
class BetaBaseline:
    """Per-prompt Beta posterior: predicts the prompt's mean for every prefix of it."""

    a0: float = 1.0
    b0: float = 1.0
    stats: dict[str, PromptStats] = field(default_factory=dict)

    def observe(self, task_id: str, successes: float, failures: float) -> None:
        old = self.stats.get(task_id, PromptStats())
        self.stats[task_id] = PromptStats(old.successes + successes, old.failures + failures)

    def predict(self, task_id: str) -> float:
        return self.stats.get(task_id, PromptStats()).posterior_mean(self.a0, self.b0)


def _stack(batch: Sequence[SparseFeatures]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = [len(f.indices) for f in batch]
    rows = np.repeat(np.arange(len(batch)), lengths)
    cols = np.concatenate([f.indices for f in batch])
    vals = np.concatenate([f.values for f in batch])
    return rows, cols, vals


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))
    return out


def auc(probabilities: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum formula, ties counted half."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def calibration_error(probabilities: npt.ArrayLike, outcomes: npt.ArrayLike, bins: int = 10) -> float:
    """Expected calibration error: bin-weighted |mean prediction - mean outcome|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(outcomes, dtype=np.float64)
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def within_group_auc(probabilities: npt.ArrayLike, labels: npt.ArrayLike, groups: Sequence[str]) -> float:
    """AUC over the (success, failure) pairs of the same group only, ties counted half.

    Groups are prompts: this is how well the scores order one prompt's own prefixes, which
    is what stage 2 needs and what a per-prompt counter cannot do (it gives all of a
    prompt's prefixes one score, so its within-prompt AUC is 0.5). NaN without such a pair.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    g = np.asarray(groups)
    ordered, pairs = 0.0, 0
    for group in np.unique(g):
        mask = g == group
        pos, neg = int(y[mask].sum()), int((~y[mask]).sum())
        if pos and neg:
            ordered += auc(p[mask], y[mask]) * pos * neg
            pairs += pos * neg
    return ordered / pairs if pairs else float("nan")
