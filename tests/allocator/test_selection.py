import numpy as np
import pytest

from allocator.selection import (
    dps_category,
    dps_emission,
    dps_predict,
    dps_prior,
    dps_transition,
    dps_update,
    gps_scores,
    paired_draw,
    select_dps,
    select_gps,
)


def test_dps_transition_rows_sum_to_one_and_stick():
    t = dps_transition(0.8)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert t[0, 0] == pytest.approx(0.8) and t[0, 1] == pytest.approx(0.1)


def test_dps_update_matches_hand_computed_bayes_rule():
    t = dps_transition(0.8)
    e = dps_emission(4)
    belief = np.array([0.5, 0.5, 0.0])
    predicted = belief @ t  # [0.45, 0.45, 0.10]
    np.testing.assert_allclose(predicted, [0.45, 0.45, 0.10])
    posterior = dps_update(belief, t, e, observed=1)
    expected = predicted * e[:, 1]
    np.testing.assert_allclose(posterior, expected / expected.sum())
    assert posterior[1] > 0.9  # a mixed group is strong evidence for the mixed state


def test_dps_categories_and_selection_prefers_mixed():
    assert [dps_category(0, 4), dps_category(2, 4), dps_category(4, 4)] == [0, 1, 2]
    t = dps_transition(0.9)
    beliefs = [dps_update(dps_prior(), t, dps_emission(4), obs) for obs in (0, 1, 2, 1)]
    mixed = [dps_predict(b, t)[1] for b in beliefs]
    assert select_dps(mixed, 2, np.random.default_rng(0)) == [1, 3]


def test_gps_prefers_half_and_spreads_over_similar_prompts():
    np.testing.assert_allclose(gps_scores([0.5, 0.0, 1.0, 0.25]), [1.0, 0.0, 0.0, 0.75])
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    values = [0.5, 0.5, 0.4]
    assert select_gps(values, embeddings, 2, diversity=0.0) == [0, 1]
    assert select_gps(values, embeddings, 2, diversity=0.5) == [0, 2]


def test_paired_draw_depends_only_on_seed_step_and_draw():
    small = paired_draw(seed=3, step=7, draw=0, population=2048, size=8)
    large = paired_draw(seed=3, step=7, draw=0, population=2048, size=32)
    assert len(small) == 8 and len(set(large)) == 32 and large == sorted(large)
    assert set(small) <= set(large)  # a uniform batch lies inside the larger candidate pool
    assert paired_draw(3, 7, 0, 2048, 8) == small  # no hidden state between calls
    assert paired_draw(4, 7, 0, 2048, 8) != small and paired_draw(3, 8, 0, 2048, 8) != small
    assert paired_draw(3, 7, 1, 2048, 8) != small
    assert paired_draw(0, 0, 0, 5, 10) == [0, 1, 2, 3, 4]
    assert paired_draw(0, 0, 0, 5, 0) == [] and paired_draw(0, 0, 0, 0, 3) == []
