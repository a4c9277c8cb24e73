"""The decomposition study's reading of learning results, against hand-computed cases."""

import json
import math

import pytest

from bench.decomposition import (
    RunSignals,
    check_equal_cost,
    collect_variants,
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
    text = decomposition_markdown(list(rows.values()), ["main"], (r, runs))
    assert "| 0.150 | 1.450 |" in text and "Across the 3 runs with both, Pearson's r between weight drift" in text
    assert math.isnan(drift_curve_correlation({"grpo": variants["grpo"]}, signals)[0])  # two runs: no r
