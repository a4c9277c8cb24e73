"""Stage-1 prompt selectors other than TRACE's DP: uniform, GPS and DPS. Pure functions.

- uniform (GRPO) needs no function: the core's random candidate draw is the batch.
- The candidate draw itself (``paired_draw``) depends only on the seed and the step, so
  runs of different strategies with the same seed see the same prompts where they can.
- GPS: the shared predictor's success estimate v per candidate; prefer v near 0.5
  (score 1 - 4 (v - 0.5)^2, which is 1 at 0.5 and 0 at 0 or 1) minus a diversity penalty,
  the largest cosine similarity of the candidate's prompt features to those already picked.
- DPS: each prompt carries a belief over the hidden states {all-fail, mixed, all-pass};
  a sticky transition matrix moves it one step per training step, and an observed group
  outcome updates it by Bayes' rule through an emission matrix that allows for a mixed
  prompt looking unanimous in a small group. The prompts most likely mixed next are picked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_draw(seed: int, step: int, draw: int, population: int, size: int) -> list[int]:
    """``size`` distinct indices out of ``population`` for the ``draw``-th draw of allocator step ``step``.

    The order comes from a generator keyed by (seed, step, draw) alone and a draw takes its
    first ``size`` entries, so what a strategy did before (how many draws, what else it
    sampled) does not change the prompts: at the same step a smaller draw is part of a larger
    one, and a uniform batch of 8 lies inside TRACE's 32 candidates. Sorted ascending.
    """
    if size < 1 or population < 1:
        return []
    order = np.random.default_rng([seed, step, draw]).permutation(population)
    return sorted(order[: min(size, population)].tolist())


def gps_scores(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return 1.0 - 4.0 * (v - 0.5) ** 2


def select_gps(values: Sequence[float], embeddings: np.ndarray, batch: int, diversity: float) -> list[int]:
    """Greedy: each pick maximises closeness-to-0.5 minus ``diversity`` x max similarity.

    ``embeddings`` are row vectors (one per candidate) compared by cosine similarity.
    """
    n = len(values)
    base = gps_scores(values)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.where(norms == 0, 1.0, norms)
    max_similarity = np.zeros(n)
    chosen: list[int] = []
    available = np.ones(n, dtype=bool)
    for _ in range(min(batch, n)):
        score = np.where(available, base - diversity * max_similarity, -np.inf)
        pick = int(np.argmax(score))
        chosen.append(pick)
        available[pick] = False
        max_similarity = np.maximum(max_similarity, unit @ unit[pick])
    return sorted(chosen)


def dps_transition(stickiness: float) -> np.ndarray:
    """Stay with probability ``stickiness``, move to either other state equally otherwise."""
    off = (1.0 - stickiness) / 2.0
    return np.full((3, 3), off) + np.eye(3) * (stickiness - off)


def dps_emission(group_size: int) -> np.ndarray:
    """P(observed category | hidden state). A mixed prompt with success ~0.5 looks unanimous
    with probability 2 * 0.5^m; the unanimous states are observed as themselves."""
    unanimous = min(0.5, 2.0 * 0.5**group_size)
    return (
        np.array(
            [
                [1.0, 0.0, 0.0],
                [unanimous / 2.0, 1.0 - unanimous, unanimous / 2.0],
                [0.0, 0.0, 1.0],
            ]
        )
        * 0.98
        + 0.02 / 3.0
    )  # a little slack so one observation never gives probability 0


def dps_prior() -> np.ndarray:
    return np.full(3, 1.0 / 3.0)


def dps_predict(belief: np.ndarray, transition: np.ndarray) -> np.ndarray:
    predicted: np.ndarray = belief @ transition
    return predicted


def dps_update(belief: np.ndarray, transition: np.ndarray, emission: np.ndarray, observed: int) -> np.ndarray:
    """Predict one step ahead, then condition on the observed category index."""
    predicted = dps_predict(belief, transition)
    posterior = predicted * emission[:, observed]
    normalised: np.ndarray = posterior / posterior.sum()
    return normalised


def dps_category(successes: int, leaves: int) -> int:
    if successes == 0:
        return 0
    if successes == leaves:
        return 2
    return 1


def select_dps(mixed_probabilities: Sequence[float], batch: int, rng: np.random.Generator) -> list[int]:
    """Top ``batch`` by P(mixed), ties broken at random so unseen prompts rotate."""
    p = np.asarray(mixed_probabilities, dtype=np.float64)
    jitter = rng.uniform(0, 1e-9, size=len(p))
    order = np.argsort(-(p + jitter), kind="stable")
    return sorted(order[: min(batch, len(p))].tolist())
