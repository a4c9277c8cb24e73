"""Decision-time scores of the predictor against hand-computed values."""

import math

import numpy as np
import pytest

from allocator.evaluation import DecisionRecord, DecisionScores, NodeEvidence, Window, leave_one_out, p_mixed


def record(task_id, depth, prediction, baseline=0.5):
    return DecisionRecord(task_id, depth, prediction, baseline, prediction, 0.0, 0.0)


def test_p_mixed_is_one_minus_all_agree():
    assert p_mixed(0.5, 2) == pytest.approx(0.5)
    assert p_mixed(0.2, 3) == pytest.approx(1 - 0.008 - 0.512)
    assert p_mixed(0.9, 1) == 0.0


def test_each_leaf_of_a_decision_is_a_sample_scored_against_the_prediction_made_before_it():
    scores = DecisionScores()
    scores.add(record("a", 0, 0.6, baseline=0.5), [1, 1, 0])  # a root group of three
    scores.add(record("a", 2, 0.1, baseline=0.5), [0, 0])  # a prefix that had failed
    scores.add(record("b", 0, 0.3, baseline=0.4), [1])
    m = scores.metrics()
    assert m["predictor_leaves"] == 6
    p = [0.6, 0.6, 0.6, 0.1, 0.1, 0.3]
    y = [1, 1, 0, 0, 0, 1]
    assert m["predictor_brier"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(p, y, strict=True)) / 6)
    base = [0.5] * 5 + [0.4]
    assert m["beta_baseline_brier"] == pytest.approx(sum((a - b) ** 2 for a, b in zip(base, y, strict=True)) / 6)
    assert m["predictor_brier_vs_beta"] == pytest.approx(m["predictor_brier"] / m["beta_baseline_brier"])
    # Positives score 0.6, 0.6, 0.3; negatives 0.6, 0.1, 0.1: 8 of 9 pairs ordered (one tie at 0.6 is half).
    assert m["predictor_auc"] == pytest.approx((2 * 2.5 + 1 * 2) / 9)
    # Within prompt a: positives 0.6, 0.6 against negatives 0.6, 0.1, 0.1 -> (0.5 + 1 + 1) * 2 / 6.
    assert m["predictor_auc_within_prompt"] == pytest.approx(5 / 6)
    assert m["predictor_auc_roots"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # positives .6,.6,.3 vs negative .6
    assert math.isnan(m["predictor_auc_prefixes"])  # prefixes: no success among them
    assert m["predictor_depth2_leaves"] == 2 and m["predictor_depth2_success"] == 0.0
    # Sibling groups of two or more: the root group (P(mixed) at 0.6 of 3, mixed) and the prefix's pair (not).
    assert m["predictor_mixed_predicted"] == pytest.approx((p_mixed(0.6, 3) + p_mixed(0.1, 2)) / 2)
    assert m["predictor_mixed_observed"] == pytest.approx(0.5)


def test_no_decision_yet_reports_only_the_count():
    assert DecisionScores().metrics() == {"predictor_leaves": 0}


def test_leave_one_out_predicts_each_leaf_from_everything_but_itself():
    # A node with 2 successful and 1 failed leaf below it, prior mean 0.5, concentration 2;
    # the prompt's baseline counts (this tree included) are 3 successes, 1 failure.
    node = NodeEvidence("a", 1, 0.5, 2.0, 2, 1, (2, 1), 3, 1)
    samples = leave_one_out([node])
    assert [s.outcome for s in samples] == [1, 1, 0]
    # A success left out: (2*0.5 + 1) / (2 + 1 + 1); the baseline (2 + 1) / (3 + 2).
    assert samples[0].prediction == pytest.approx(2 / 4) and samples[0].baseline == pytest.approx(3 / 5)
    # The failure left out: (1 + 2) / (2 + 2 + 0); the baseline (3 + 1) / (3 + 0 + 2).
    assert samples[2].prediction == pytest.approx(3 / 4) and samples[2].baseline == pytest.approx(4 / 5)
    # A node without leaves of one kind gives none of that kind.
    assert [s.outcome for s in leave_one_out([NodeEvidence("a", 2, 0.5, 2.0, 0, 2, (0, 2), 0, 2)])] == [0, 0]


def test_loo_metrics_carry_their_own_names():
    scores = DecisionScores()
    scores.add_samples(leave_one_out([NodeEvidence("a", 0, 0.5, 2.0, 1, 1, (1, 1), 1, 1)]))
    m = scores.metrics("predictor_loo", "beta_loo")
    assert m["predictor_loo_leaves"] == 2 and "beta_loo_brier" in m and "predictor_brier" not in m


def test_a_window_keeps_the_last_rows_in_arrays_allocated_once():
    window = Window(3, value=np.float64, name=object)
    size = window.nbytes
    window.extend(value=[1.0, 2.0], name=["a", "b"])
    assert len(window) == 2 and sorted(window.column("value").tolist()) == [1.0, 2.0]
    window.extend(value=[3.0, 4.0], name=["c", "d"])  # 1.0 gives way
    assert sorted(window.column("value").tolist()) == [2.0, 3.0, 4.0]
    assert sorted(window.column("name").tolist()) == ["b", "c", "d"]
    window.extend(value=[5.0, 6.0, 7.0, 8.0], name=["e", "f", "g", "h"])  # more than it holds in one call
    assert sorted(window.column("value").tolist()) == [6.0, 7.0, 8.0]
    assert sorted(window.column("name").tolist()) == ["f", "g", "h"]
    assert len(window) == 3 and window.nbytes == size
    with pytest.raises(ValueError, match="columns"):
        window.extend(value=[1.0])
    with pytest.raises(ValueError, match="as long"):
        window.extend(value=[1.0], name=[])


def test_scores_over_a_full_window_are_those_of_its_last_rows():
    scores = DecisionScores(window=4)
    scores.add(record("a", 0, 0.9), [0, 0])  # pushed out below
    scores.add(record("a", 0, 0.8), [1, 1])
    scores.add(record("b", 1, 0.2), [0, 0])
    m = scores.metrics()
    assert m["predictor_leaves"] == 4
    assert m["predictor_auc"] == 1.0  # 0.8 for the successes, 0.2 for the failures
    assert m["predictor_brier"] == pytest.approx((0.2**2 * 2 + 0.2**2 * 2) / 4)
    assert m["predictor_mixed_observed"] == 0.0  # the three pairs: none mixed
