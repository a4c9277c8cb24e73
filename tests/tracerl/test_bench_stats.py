"""The learning bench's statistics and headline, against hand-computed cases."""

import json
import math

import pytest

from bench.curve import curve_points
from bench.learning import (
    bench_run_settings,
    headline,
    headline_markdown,
    headline_path,
    recorded_outcomes,
    run_failure,
)
from bench.runs import RESULTS_DIR, CurvePoint, RunOutcome, json_safe
from bench.stats import curve_mean, mean_se, paired_difference, paired_differences


def test_curve_mean_is_the_trapezoid_average_over_versions():
    # area 5 (0.4 + 0.6) / 2 + 5 (0.6 + 0.8) / 2 = 6 over 10 versions
    assert curve_mean([(0, 0.4), (5, 0.6), (10, 0.8)]) == pytest.approx(0.6)
    # evenly spaced: the plain mean with half weight on the ends, (0.2/2 + 0.9 + 0.5/2) / 2
    assert curve_mean([(10, 0.5), (0, 0.2), (5, 0.9)]) == pytest.approx(0.625)
    # a short last interval weighs less: (5 (0 + 1) / 2 + 2 (1 + 1) / 2) / 7
    assert curve_mean([(0, 0.0), (5, 1.0), (7, 1.0)]) == pytest.approx(4.5 / 7)
    assert curve_mean([(3, 0.7)]) == 0.7
    assert math.isnan(curve_mean([]))


def test_mean_and_standard_error_by_hand():
    summary = mean_se([0.1, 0.2])
    # std = sqrt(((-0.05)^2 + 0.05^2) / 1) = 0.0707; se = 0.0707 / sqrt(2) = 0.05
    assert (summary.mean, summary.se, summary.n) == (pytest.approx(0.15), pytest.approx(0.05), 2)
    single = mean_se([0.3])
    assert single.mean == 0.3 and math.isnan(single.se)  # undefined, not 0
    assert math.isnan(mean_se([]).mean) and mean_se([]).n == 0


def test_paired_difference_uses_only_the_seeds_both_have():
    ours = {0: 0.5, 1: 0.7, 2: 0.6}
    theirs = {0: 0.4, 1: 0.5, 3: 0.9}
    assert paired_differences(ours, theirs) == {0: pytest.approx(0.1), 1: pytest.approx(0.2)}
    diff = paired_difference(ours, theirs)
    assert diff.seeds == (0, 1)
    assert diff.mean == pytest.approx(0.15) and diff.se == pytest.approx(0.05)
    one = paired_difference({4: 0.9}, {4: 0.5, 5: 0.1})
    assert one.seeds == (4,) and one.mean == pytest.approx(0.4) and math.isnan(one.se)
    none = paired_difference({0: 1.0}, {1: 1.0})
    assert none.seeds == () and math.isnan(none.mean) and math.isnan(none.se)


def _run(strategy, seed, g5, g10, returncode=0, steps=10, auc=None):
    """A run whose greedy curve is (0.4, g5, g10) at versions 0, 5, 10, sampled 0.1 below."""
    curve = tuple(CurvePoint(v, g, g - 0.1) for v, g in ((0, 0.4), (5, g5), (10, g10)))
    return RunOutcome(
        name=f"learn-{strategy}-s{seed}",
        run_dir=None,
        returncode=returncode,
        wall_seconds=100.0,
        learner_steps=steps,
        heldout_greedy_before=0.4,
        heldout_greedy_after=g10,
        heldout_sampled_before=0.3,
        heldout_sampled_after=g10 - 0.1,
        effective_ratio=0.3,
        informative_token_share=0.5,
        mixed_root_groups_per_100_turns=2.0,
        generated_turns=960.0,
        generated_tokens=9000.0,
        first_step_at=0.0,
        last_step_at=40.0,
        mixed_branch_groups_per_100_turns=1.0,
        predictor_auc=auc,
        strategy=strategy,
        seed=seed,
        heldout_curve=curve,
        eval_seconds=60.0,
    )


def _table():
    return {
        # greedy curve means (0.4 + 2 g5 + g10) / 4: trace 0.6, 0.55, 0.75; grpo 0.5, 0.6, 0.4
        "trace": [
            _run("trace", 0, 0.6, 0.8, auc=0.6),
            _run("trace", 1, 0.6, 0.6, auc=0.7),
            _run("trace", 2, 0.9, 0.9, returncode=1),
            _run("trace", 3, 0.8, 1.0),
        ],
        "grpo": [_run("grpo", 0, 0.5, 0.6), _run("grpo", 1, 0.6, 0.8), _run("grpo", 2, 0.4, 0.4)],
        "tree-random": [_run("tree-random", 0, 0.5, 0.5), _run("tree-random", 1, 0.5, 0.5, steps=7)],
    }


def test_headline_pairs_completed_seeds_and_counts_failed_runs():
    rows = headline(_table(), steps=10)
    trace, grpo = rows["trace"], rows["grpo"]
    assert (trace["seeds"], trace["seed_indices"], trace["failed_runs"]) == (3, [0, 1, 3], 1)
    assert trace["failures"] == {"learn-trace-s2": "exit code 1"}
    assert trace["heldout_greedy_curve_mean"] == pytest.approx((0.6 + 0.55 + 0.75) / 3)
    # deviations -1/30, -1/12, 7/60: std sqrt(0.021667 / 2) = 0.10408, se = 0.10408 / sqrt(3)
    assert trace["heldout_greedy_curve_mean_se"] == pytest.approx(0.060093, abs=1e-6)
    assert trace["heldout_greedy_final"] == pytest.approx(0.8) and trace["heldout_sampled_final"] == pytest.approx(0.7)
    assert trace["mixed_root_groups_per_100_turns"] == 2.0 and trace["mixed_groups_per_100_turns"] == 3.0
    assert trace["predictor_auc"] == pytest.approx(0.65) and "predictor_auc" not in grpo
    assert trace["training_seconds"] == 40.0 and trace["eval_seconds"] == 60.0
    paired = trace["paired_diff_vs_grpo"]
    # common completed seeds 0 and 1: curve-mean differences 0.1 and -0.05
    assert paired["seeds"] == 2 and paired["seed_indices"] == [0, 1]
    assert paired["mean"] == pytest.approx(0.025) and paired["se"] == pytest.approx(0.075)
    # last points: 0.8 - 0.6 and 0.6 - 0.8
    assert paired["heldout_greedy_final"]["mean"] == pytest.approx(0.0)
    assert paired["heldout_greedy_final"]["se"] == pytest.approx(0.2)
    assert paired["heldout_sampled_curve_mean"]["mean"] == pytest.approx(0.025)
    assert "paired_diff_vs_grpo" not in grpo and grpo["seeds"] == 3
    # one completed seed (the other stopped after 7 of 10 steps): no SE, and it says so
    single = rows["tree-random"]
    assert single["seeds"] == 1 and single["failures"] == {"learn-tree-random-s1": "7 of 10 learner steps"}
    assert single["paired_diff_vs_grpo"]["mean"] == pytest.approx((0.4 + 1.0 + 0.5) / 4 - 0.5)
    assert math.isnan(single["paired_diff_vs_grpo"]["se"]) and math.isnan(single["heldout_greedy_curve_mean_se"])
    written = json.loads(json.dumps(json_safe(rows)))
    assert written["tree-random"]["paired_diff_vs_grpo"]["se"] is None
    table = headline_markdown(rows)
    assert "| trace | 2 | +0.025 ± 0.075 |" in table and "| tree-random | 1 | -0.025 ± - |" in table


def test_headline_without_the_baseline_pairs_nothing():
    rows = headline({"trace": _table()["trace"]}, steps=10)
    assert rows["trace"]["paired_diff_vs_grpo"]["seeds"] == 0
    assert math.isnan(rows["trace"]["paired_diff_vs_grpo"]["mean"])


def test_a_run_counts_only_with_every_step_and_a_whole_curve():
    assert run_failure(_run("trace", 0, 0.5, 0.5), steps=10) is None
    assert run_failure(_run("trace", 0, 0.5, 0.5, returncode=3), steps=10) == "exit code 3"
    assert run_failure(_run("trace", 0, 0.5, 0.5), steps=12) == "10 of 12 learner steps"
    short = _run("trace", 0, 0.5, 0.5, steps=12)
    assert "curve incomplete" in run_failure(short, steps=12)  # its last point is version 10
    no_curve = RunOutcome.from_dict({**_run("grpo", 1, 0.5, 0.5).as_dict(), "heldout_curve": []})
    assert "curve incomplete" in run_failure(no_curve, steps=10)


def test_a_recorded_run_round_trips_and_old_records_still_load():
    run = _run("trace", 3, 0.6, 0.7, auc=0.61)
    record = json.loads(json.dumps(run.as_dict()))
    assert record["mixed_groups_per_100_turns"] == 3.0
    assert record["heldout_greedy_curve_mean"] == pytest.approx((0.4 + 1.2 + 0.7) / 4)
    assert RunOutcome.from_dict(record) == run
    old = {k: v for k, v in record.items() if k not in ("mixed_root_groups_per_100_turns", "heldout_curve", "seed")}
    old["mixed_groups_per_100_turns"] = 2.5  # before branch groups were counted it meant roots only
    restored = RunOutcome.from_dict(old)
    assert restored.mixed_root_groups_per_100_turns == 2.5 and restored.heldout_curve == () and restored.seed is None


def test_merge_keeps_recorded_runs_except_the_strategy_and_seed_pairs_run_again():
    settings = {"learner.training.max_steps": 10, "curve.eval_tasks": 500}
    runs = {s: [r.as_dict() for r in rs] for s, rs in _table().items()}
    previous = {"settings": {**settings, "seeds": 3}, "runs": runs}  # a seed count here is ignored
    kept = recorded_outcomes(previous, settings, planned={("trace", 1), ("trace", 3), ("grpo", 0)})
    assert [r.seed for r in kept["trace"]] == [0, 2] and [r.seed for r in kept["grpo"]] == [1, 2]
    assert len(kept["tree-random"]) == 2
    assert recorded_outcomes(previous, {**settings, "curve.eval_tasks": 100}, planned=set()) == {}
    assert recorded_outcomes(None, settings, planned=set()) == {}
    # A longer run limit on a loaded machine keeps the recorded runs comparable.
    assert len(recorded_outcomes(previous, {**settings, "timeout_s": 2400}, planned=set())["trace"]) == 4


def test_curve_points_start_at_the_initial_model_and_follow_the_versions():
    def record(version, greedy, sampled):
        results = [{"mode": "sampled", "success_rate": sampled}, {"mode": "greedy", "success_rate": greedy}]
        return {"policy_version": version, "results": results}

    records = [record(10, 0.7, 0.6), record(5, 0.55, 0.5)]
    initial = {"greedy_success": 0.37, "sampled_success": 0.39}
    expected = (CurvePoint(0, 0.37, 0.39), CurvePoint(5, 0.55, 0.5), CurvePoint(10, 0.7, 0.6))
    assert curve_points(initial, records) == expected
    assert curve_points(None, records)[0].policy_version == 5  # no initial point: the run will not count


def test_every_run_keeps_all_its_checkpoints_and_evaluates_only_after_training():
    settings = bench_run_settings({"learner.training.max_steps": 40, "eval_tasks": 100}, 40, 500, 5)
    assert settings["learner.training.checkpoint_every_steps"] == 5
    assert settings["learner.training.keep_checkpoints"] == 9  # versions 5, 10, ..., 40
    assert settings["eval_tasks"] == 0 and settings["allocator.heldout.every_versions"] == 0
    with pytest.raises(ValueError):
        bench_run_settings({}, 40, 0, 5)


def test_the_main_table_owns_headline_json_and_a_side_study_its_own():
    assert headline_path("learning") == RESULTS_DIR / "headline.json"
    assert headline_path("learning-trace-grpo-9seeds") == RESULTS_DIR / "learning-trace-grpo-9seeds-headline.json"
