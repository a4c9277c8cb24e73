"""The decomposition study's reading of learning results, against hand-computed cases."""

import json
import math
import shutil
from dataclasses import replace

import pytest

from bench.decomposition import (
    SIGNALS,
    RunSignals,
    check_equal_cost,
    collect_variants,
    correlation_or_carried,
    decomposition_markdown,
    decomposition_rows,
    drift_curve_correlation,
    run_decomposition,
    signals_from_metrics,
    variant_label,
)
from bench.runs import json_safe
from tests.tracerl.test_bench_stats import _run

BASE = {"learner.training.max_steps": 10, "allocator.core.step_budget_turns": 96, "seeds": 3}


def _payload(settings, runs):
    return json_safe({"settings": settings, "runs": {s: [r.as_dict() for r in rs] for s, rs in runs.items()}})


def test_a_variant_is_named_by_its_strategy_and_the_settings_that_differ():
    assert variant_label("trace", BASE, BASE) == "trace"
    # The seed count is per run, not a setting of the study.
    assert variant_label("grpo", {**BASE, "seeds": 9, "timeout_s": 2400}, BASE) == "grpo"
    assert (
        variant_label("trace", {**BASE, "allocator.core.min_per_prompt": 4}, BASE)
        == "trace [allocator.core.min_per_prompt=4]"
    )


def test_files_run_at_another_cost_are_refused():
    check_equal_cost({**BASE, "allocator.core.min_per_prompt": 4}, BASE, "side")
    with pytest.raises(ValueError, match=r"learner\.training\.max_steps"):
        check_equal_cost({**BASE, "learner.training.max_steps": 20}, BASE, "longer")


def test_rows_pair_each_variant_with_grpo_by_seed():
    main = _payload(BASE, {"grpo": [_run("grpo", 0, 0.6, 0.6), _run("grpo", 1, 0.5, 0.7)]})
    side = _payload(
        {**BASE, "allocator.core.min_per_prompt": 4},
        {"trace": [_run("trace", 0, 0.8, 0.8), _run("trace", 1, 0.6, 0.6), _run("trace", 2, 0.9, 0.9)]},
    )
    variants = collect_variants([("main", main), ("side", side)])
    assert set(variants) == {"grpo", "trace [allocator.core.min_per_prompt=4]"}
    signals = {
        ("trace [allocator.core.min_per_prompt=4]", 0): RunSignals(prompts_per_step=4.0, root_turn_share=0.5),
        ("trace [allocator.core.min_per_prompt=4]", 1): RunSignals(prompts_per_step=6.0, root_turn_share=0.7),
        ("trace [allocator.core.min_per_prompt=4]", 2): RunSignals(
            prompts_per_step=8.0, predictor_by_depth={1: (0.7, 0.2, 0.25)}
        ),
    }
    rows = {row["variant"]: row for row in decomposition_rows(variants, signals, steps=10)}
    trace = rows["trace [allocator.core.min_per_prompt=4]"]
    # curve means (0.4 + 2 g5 + g10) / 4: trace 0.7, 0.55, 0.775; grpo 0.55, 0.525.
    # Paired on seeds 0 and 1: +0.15 and +0.025, mean 0.0875, se = |0.15 - 0.025| / 2 = 0.0625.
    assert trace["heldout_greedy_curve_mean_vs_grpo"]["mean"] == pytest.approx(0.0875)
    assert trace["heldout_greedy_curve_mean_vs_grpo"]["se"] == pytest.approx(0.0625)
    assert trace["heldout_greedy_curve_mean_vs_grpo"]["seeds"] == 2
    # Finals 0.8, 0.6 against 0.6, 0.7: +0.2 and -0.1.
    assert trace["heldout_greedy_final_vs_grpo"]["mean"] == pytest.approx(0.05)
    assert trace["seeds"] == 3 and trace["prompts_per_step"] == pytest.approx(6.0)
    assert trace["root_turn_share"] == pytest.approx(0.6)  # a run without the record is left out
    assert trace["predictor_by_depth"] == {1: {"auc": 0.7, "brier": 0.2, "beta_brier": 0.25}}
    assert "heldout_greedy_curve_mean_vs_grpo" not in rows["grpo"]
    text = decomposition_markdown(list(rows.values()), ["main", "side"])
    # 0.675 ± sqrt(0.02625 / 2 / 3) over the three seeds.
    assert "| trace [allocator.core.min_per_prompt=4] | 3 | 0.675 ± 0.066 | +0.087 ± 0.062 |" in text
    assert "| trace [allocator.core.min_per_prompt=4] | 1 | 0.700 | 0.200 | 0.250 |" in text


def test_failed_or_short_runs_do_not_count():
    variants = {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [_run("trace", 0, 0.9, 0.9, returncode=1)]}
    rows = {row["variant"]: row for row in decomposition_rows(variants, {}, steps=10)}
    assert rows["trace"]["seeds"] == 0
    short = {"grpo": [_run("grpo", 0, 0.6, 0.6, steps=7)]}
    assert decomposition_rows(short, {}, steps=10)[0]["seeds"] == 0


def test_signals_are_read_from_the_learner_steps_and_the_allocator_last_record():
    learner = [
        {"train.trees": 4, "batch.leaves": 20, "train.nonzero_advantage_token_share": 0.5},
        {"train.trees": 6, "batch.leaves": 30, "train.nonzero_advantage_token_share": 0.3},
        {"weights_published": 1},  # not a step record
    ]
    allocator = {
        "core.root_turn_share": 0.7,
        "core.predictor_depth0_auc": 0.6,
        "core.predictor_depth0_brier": 0.24,
        "core.beta_baseline_depth0_brier": 0.25,
    }
    signals = signals_from_metrics(learner, allocator)
    assert signals.prompts_per_step == 5.0 and signals.leaves_per_step == 25.0
    assert signals.nonzero_advantage_token_share == pytest.approx(0.4)
    assert signals.root_turn_share == 0.7
    assert signals.predictor_by_depth == {0: (0.6, 0.24, 0.25)}


def test_the_study_writes_its_tables_from_results_files(tmp_path):
    run_dir = tmp_path / "learn-trace-s0"
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "metrics" / "learner.jsonl").write_text(json.dumps({"train.trees": 5, "batch.leaves": 40}) + "\n")
    (run_dir / "metrics" / "allocator.jsonl").write_text(json.dumps({"core.root_turn_share": 0.75}) + "\n")
    trace = _run("trace", 0, 0.8, 0.8)
    trace = type(trace)(**{**trace.__dict__, "run_dir": run_dir})
    (tmp_path / "main.json").write_text(
        json.dumps(_payload(BASE, {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [trace]}))
    )
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    rows = {row["variant"]: row for row in json.loads(js.read_text())["rows"]}
    assert rows["trace"]["prompts_per_step"] == 5.0 and rows["trace"]["root_turn_share"] == 0.75
    assert rows["grpo"]["prompts_per_step"] is None  # its directory is not here
    assert "`bench/results/main.json`" in md.read_text()
    with pytest.raises(FileNotFoundError):
        run_decomposition(["missing"], results_dir=tmp_path)


def test_the_command_names_a_missing_results_file():
    from typer.testing import CliRunner

    from tracerl.cli import app

    result = CliRunner().invoke(app, ["bench", "decomposition", "no-such-study"])
    assert result.exit_code == 2
    assert "no learning results at" in result.output


def test_grad_norm_and_weight_drift_are_averaged_and_drift_is_correlated_with_the_curve():
    variants = {
        "grpo": [_run("grpo", 0, 0.6, 0.6), _run("grpo", 1, 0.5, 0.7)],
        "trace": [_run("trace", 0, 0.8, 0.8), _run("trace", 1, 0.6, 0.6)],
    }
    signals = {
        ("grpo", 0): RunSignals(grad_norm=0.1, weight_drift=1.5),
        ("grpo", 1): RunSignals(grad_norm=0.2, weight_drift=1.4),
        ("trace", 0): RunSignals(grad_norm=0.3, weight_drift=1.9),
        ("trace", 1): RunSignals(grad_norm=0.5),  # its final model is gone: no drift
    }
    rows = {row["variant"]: row for row in decomposition_rows(variants, signals, steps=10)}
    assert rows["grpo"]["grad_norm"] == pytest.approx(0.15) and rows["grpo"]["weight_drift"] == pytest.approx(1.45)
    assert rows["trace"]["grad_norm"] == pytest.approx(0.4) and rows["trace"]["weight_drift"] == pytest.approx(1.9)
    # Curve means (0.4 + 2 g5 + g10) / 4: grpo 0.55, 0.525; trace 0.7. Drifts 1.5, 1.4, 1.9.
    xs, ys = [1.5, 1.4, 1.9], [0.55, 0.525, 0.7]
    mx, my = sum(xs) / 3, sum(ys) / 3
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    r, runs = drift_curve_correlation(variants, signals)
    assert runs == 3 and r == pytest.approx(sxy / (sxx * syy) ** 0.5)
    text = decomposition_markdown(list(rows.values()), ["main"], {"r": r, "runs": runs})
    assert "| 0.150 | 1.450 |" in text and "Across the 3 runs with both, Pearson's r between weight drift" in text
    assert math.isnan(drift_curve_correlation({"grpo": variants["grpo"]}, signals)[0])  # two runs: no r


def _run_with_dir(run, run_dir, trees, leaves, root_share, depth0=None):
    """``run`` with a directory whose metrics say ``trees`` prompts and ``leaves`` leaves per step."""
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "metrics" / "learner.jsonl").write_text(
        json.dumps({"train.trees": trees, "batch.leaves": leaves}) + "\n"
    )
    allocator = {"core.root_turn_share": root_share}
    if depth0 is not None:
        allocator |= {"core.predictor_depth0_auc": depth0[0], "core.predictor_depth0_brier": depth0[1]}
    (run_dir / "metrics" / "allocator.jsonl").write_text(json.dumps(allocator) + "\n")
    return type(run)(**{**run.__dict__, "run_dir": run_dir})


def _write_results(tmp_path, runs, name="main"):
    (tmp_path / f"{name}.json").write_text(json.dumps(_payload(BASE, runs)))


def test_a_run_whose_directory_is_gone_keeps_its_signals_from_the_last_decomposition(tmp_path):
    s0 = _run_with_dir(_run("trace", 0, 0.8, 0.8), tmp_path / "trace-s0", 4, 40, 0.5, depth0=(0.7, 0.2))
    s1 = _run_with_dir(_run("trace", 1, 0.6, 0.6), tmp_path / "trace-s1", 6, 60, 0.7)
    _write_results(tmp_path, {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [s0, s1]})
    _, js = run_decomposition(["main"], results_dir=tmp_path)
    first = json.loads(js.read_text())
    assert first["run_signals"]["trace"]["0"]["prompts_per_step"] == 4.0
    assert "grpo" not in first["run_signals"]  # a run with nothing to say leaves no record

    shutil.rmtree(tmp_path / "trace-s0")
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    second = json.loads(js.read_text())
    assert second["run_signals"]["trace"] == first["run_signals"]["trace"]
    trace = next(row for row in second["rows"] if row["variant"] == "trace")
    assert trace["prompts_per_step"] == 5.0 and trace["root_turn_share"] == pytest.approx(0.6)
    assert trace["predictor_by_depth"] == {"0": {"auc": 0.7, "brier": 0.2, "beta_brier": None}}
    assert trace["signal_runs"] == 2 and "signals_from" not in trace
    # Its signals survive a third decomposition too, read back from the record alone.
    shutil.rmtree(tmp_path / "trace-s1")
    _, js = run_decomposition(["main"], results_dir=tmp_path)
    assert json.loads(js.read_text())["run_signals"]["trace"] == first["run_signals"]["trace"]

    # A later run at the same seed is another run: the old record is not its signals.
    rerun = type(s0)(**{**_run("trace", 0, 0.9, 0.9).__dict__, "run_dir": tmp_path / "trace-s0", "first_step_at": 99.0})
    _write_results(tmp_path, {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [rerun, s1]})
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    third = json.loads(js.read_text())
    assert set(third["run_signals"]["trace"]) == {"1"}
    trace = next(row for row in third["rows"] if row["variant"] == "trace")
    assert trace["prompts_per_step"] == 6.0 and trace["signal_runs"] == 1
    assert "| trace | 2 (1 with signals) |" in md.read_text()


def _previous_file(tmp_path, rows, correlation=None):
    """A decomposition.json as written before per-run records were kept: only the means."""
    payload = {"sources": ["main"], "rows": rows, "drift_curve_correlation": correlation or {"r": None, "runs": 0}}
    (tmp_path / "decomposition.json").write_text(json.dumps(payload))


def _old_row(variant, seeds, prompts):
    means = dict.fromkeys(SIGNALS) | {"prompts_per_step": prompts, "weight_drift": 1.3}
    return {
        "variant": variant,
        "seeds": seeds,
        **means,
        "predictor_by_depth": {"0": {"auc": 0.6, "brier": 0.24, "beta_brier": None}},
    }


def test_means_are_carried_from_a_previous_file_only_for_the_same_number_of_seeds(tmp_path):
    _write_results(
        tmp_path,
        {
            "grpo": [_run("grpo", 0, 0.6, 0.6), _run("grpo", 1, 0.5, 0.7)],
            "trace": [_run("trace", 0, 0.8, 0.8), _run("trace", 1, 0.6, 0.6), _run("trace", 2, 0.9, 0.9)],
        },
    )
    # grpo was recorded over its 2 seeds; trace over 2 of the 3 it has now.
    _previous_file(tmp_path, [_old_row("grpo", 2, 6.4), _old_row("trace", 2, 5.0)])
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    rows = {row["variant"]: row for row in json.loads(js.read_text())["rows"]}
    grpo, trace = rows["grpo"], rows["trace"]
    assert grpo["prompts_per_step"] == 6.4 and grpo["weight_drift"] == 1.3 and grpo["leaves_per_step"] is None
    assert grpo["predictor_by_depth"] == {"0": {"auc": 0.6, "brier": 0.24, "beta_brier": None}}
    assert grpo["signals_from"] == "previous decomposition (run directories gone)"
    assert trace["prompts_per_step"] is None and trace["predictor_by_depth"] == {} and "signals_from" not in trace
    text = md.read_text()
    assert "| grpo † | 2 |" in text and "| grpo † | 0 | 0.600 | 0.240 | - |" in text
    assert "| trace | 3 (0 with signals) |" in text and "† Signal columns and predictor scores carried" in text

    # Carried rows stay carried while nothing newer is known about the variant's runs.
    _, js = run_decomposition(["main"], results_dir=tmp_path)
    again = {row["variant"]: row for row in json.loads(js.read_text())["rows"]}
    assert again["grpo"]["prompts_per_step"] == 6.4 and again["grpo"]["signals_from"]


def test_the_drift_correlation_is_carried_when_no_run_has_a_drift(tmp_path):
    _write_results(tmp_path, {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [_run("trace", 0, 0.8, 0.8)]})
    _previous_file(tmp_path, [], correlation={"r": 0.87, "runs": 47})
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    assert json.loads(js.read_text())["drift_curve_correlation"] == {
        "r": 0.87,
        "runs": 47,
        "from": "previous decomposition (run directories gone)",
    }
    assert "Across the 47 runs with both in the previous decomposition (carried" in md.read_text()
    assert "is 0.87." in md.read_text()
    # Without a previous correlation there is nothing to say, and no r is made up.
    (tmp_path / "decomposition.json").unlink()
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    assert json.loads(js.read_text())["drift_curve_correlation"] == {"r": None, "runs": 0}
    assert "Pearson" not in md.read_text()


def test_current_drifts_replace_a_previous_correlation():
    previous = {"drift_curve_correlation": {"r": 0.87, "runs": 47}}
    assert correlation_or_carried((0.5, 3), previous) == {"r": 0.5, "runs": 3}
    assert correlation_or_carried((math.nan, 2), previous)["r"] == 0.87
    assert correlation_or_carried((math.nan, 1), {"drift_curve_correlation": {"r": None, "runs": 0}})["runs"] == 1


def test_signals_round_trip_through_their_record_and_fill_only_gaps():
    signals = RunSignals(prompts_per_step=4.0, weight_drift=1.2, predictor_by_depth={0: (0.6, 0.2, None)})
    assert RunSignals.from_record(json.loads(json.dumps(signals.as_record()))) == signals
    fresh = RunSignals(prompts_per_step=5.0)  # the final model was deleted: no drift any more
    assert fresh.filled_from(signals) == replace(signals, prompts_per_step=5.0)
    assert RunSignals().is_empty and not fresh.is_empty


def test_the_study_adds_where_the_signal_is_from_the_predictor_bench(tmp_path):
    (tmp_path / "main.json").write_text(
        json.dumps(_payload(BASE, {"grpo": [_run("grpo", 0, 0.6, 0.6)], "trace": [_run("trace", 0, 0.8, 0.8)]}))
    )
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    assert "Where the signal is" not in md.read_text()  # no predictor bench result here
    prefixes = [
        {"depth": 0, "outcomes": [1, 1, 0, 0]},  # V(1 - V) estimated at 2*2/(4*3) = 1/3
        {"depth": 0, "outcomes": [1, 1, 1, 1]},
    ]
    (tmp_path / "predictor.json").write_text(
        json.dumps({"versions": [{"label": "base model (/models/x)", "policy_version": 0, "prefixes": prefixes}]})
    )
    md, js = run_decomposition(["main"], results_dir=tmp_path)
    (row,) = json.loads(js.read_text())["ground_truth_by_depth"]["base model"]
    assert row["within_variance"] == pytest.approx(1 / 6) and row["total_variance"] == pytest.approx(0.1875)
    # A pair on the first prefix is mixed with chance 4/6, on the second never.
    assert row["yields"][0] == {
        "group": 2,
        "mixed_probability": pytest.approx(1 / 3),
        "mixed_groups_per_rollout": pytest.approx(1 / 6),
    }
    assert "| base model | 0 | 2 | 0.750 | 0.188 | 0.167 | 0.89 | 0.333 |" in md.read_text()
