"""The predictor benchmark: its scoring against hand-computed cases, and one tiny run on a real engine."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.predictor_scoring import (
    PREDICTORS,
    DepthRates,
    DiagnosticPrefix,
    Forecast,
    Labelled,
    between_prefix_auc,
    depth_quotas,
    forecast_samples,
    halves,
    informative_prefix_pairs,
    noise_ceiling,
    pairs_of,
    predictor_table,
    select_prefixes,
    split_half_samples,
)

ROOT = Path(__file__).resolve().parents[2]


def test_depth_quotas_share_equally_and_pass_a_scarce_depths_rest_on():
    # 160 over 5 depths is 32 each; depth 4 has only 20, so the other 4 share 140: 35 each
    assert depth_quotas({0: 60, 1: 240, 2: 200, 3: 100, 4: 20}, 160) == {4: 20, 0: 35, 3: 35, 2: 35, 1: 35}
    # rounding up goes to the scarcest depths first
    assert depth_quotas({0: 10, 1: 10, 2: 10}, 4) == {0: 2, 1: 1, 2: 1}
    assert depth_quotas({0: 2, 1: 3}, 10) == {0: 2, 1: 3}


def test_selected_prefixes_follow_the_quotas_and_the_seed():
    depths = [0, 1, 1, 1, 2, 2, 0, 1]
    chosen = select_prefixes(depths, 4, seed=3)
    # quotas: depth 0 and 2 have 2 each, depth 1 has 4: ceil(4/3) = 2 to depth 0, then 1 and 1
    assert chosen == sorted(chosen) and len(set(chosen)) == 4
    assert sorted(depths[i] for i in chosen) == [0, 0, 1, 2]
    assert select_prefixes(depths, 4, seed=3) == chosen
    assert {tuple(select_prefixes(depths, 4, seed=s)) for s in range(20)} != {tuple(chosen)}  # the seed chooses


def test_depth_rates_pool_leaves_and_fall_back_to_the_overall_rate():
    rates = DepthRates.pooled([(0, 2, 4), (1, 1, 1), (1, 0, 1), (2, 3, 3)])
    assert dict(rates.rates) == {0: 0.5, 1: 0.5, 2: 1.0}
    assert rates.overall == pytest.approx(6 / 9) and rates.rate(3) == pytest.approx(6 / 9)
    assert DepthRates.pooled([]).rate(0) == 0.5


def test_halves_pairs_and_mixing_of_a_belief():
    assert halves((1, 0, 1, 1)) == ((1, 0), (1, 1))
    assert pairs_of((1, 0, 1, 1, 0)) == [(1, 0), (1, 1)]
    assert Forecast(0.5).mixed2 == pytest.approx(0.5)  # 2 p (1 - p)
    # Beta(s p, s (1 - p)): 2 p (1 - p) s / (s + 1)
    assert Forecast(0.5, 1.0).mixed2 == pytest.approx(0.25)
    assert Forecast(0.2, 4.0).mixed2 == pytest.approx(2 * 0.2 * 0.8 * 4 / 5)


def _samples(rows):
    return [Labelled(p, y, prefix, prompt, 0) for p, y, prefix, prompt in rows]


def test_auc_counts_only_pairs_of_different_prefixes():
    rows = [(0.9, 1, 0, "a"), (0.9, 0, 0, "a"), (0.2, 0, 1, "a"), (0.2, 0, 1, "a"), (0.5, 1, 2, "b")]
    # successes s0 (0.9), s2 (0.5); failures f0 (0.9, same prefix as s0: left out), f1, f1 (0.2)
    # s0-f1 x2 right, s2-f0 wrong, s2-f1 x2 right: 4 of 5
    assert between_prefix_auc(_samples(rows)) == pytest.approx(0.8)
    # within prompt a only s0-f1 x2, both right; prompt b has no failure
    assert between_prefix_auc(_samples(rows), within_prompt=True) == pytest.approx(1.0)
    rows.append((0.5, 0, 3, "b"))  # ties with s2: half a pair
    assert between_prefix_auc(_samples(rows)) == pytest.approx(5.5 / 7)
    assert between_prefix_auc(_samples(rows), within_prompt=True) == pytest.approx(2.5 / 3)
    assert math.isnan(between_prefix_auc(_samples(rows[:2])))  # one prefix: nothing to order
    # prefix 1 (failures only) and 3 (one failure) hold no (success, failure) pair; every other pair does
    assert informative_prefix_pairs(_samples(rows)) == 5
    assert informative_prefix_pairs(_samples(rows), within_prompt=True) == 2
    assert informative_prefix_pairs(_samples(rows[:2])) == 0
    assert math.isnan(between_prefix_auc([]))


def _two_prefixes():
    def forecasts(ours, depth):
        shared, beta = Forecast(0.5, 2.0), Forecast(0.6, 6.0)
        return {"ours": Forecast(ours), "shared": shared, "beta": beta, "depth": Forecast(depth)}

    return [
        DiagnosticPrefix("a", 0, (1, 1, 0, 1), forecasts(0.8, 0.4)),
        DiagnosticPrefix("a", 1, (0, 0, 0, 1), forecasts(0.2, 0.3)),
    ]


def test_a_forecasters_samples_and_pairs():
    samples, pairs = forecast_samples(_two_prefixes(), "ours")
    assert [(s.prediction, s.outcome, s.prefix) for s in samples] == [
        (0.8, 1, 0),
        (0.8, 1, 0),
        (0.8, 0, 0),
        (0.8, 1, 0),
        (0.2, 0, 1),
        (0.2, 0, 1),
        (0.2, 0, 1),
        (0.2, 1, 1),
    ]
    # pairs (1, 1) (0, 1) and (0, 0) (0, 1), each predicted 2 p (1 - p) = 0.32
    assert [s.prediction for s in pairs] == pytest.approx([0.32] * 4) and [s.outcome for s in pairs] == [0, 1, 0, 1]


def test_the_oracle_predicts_each_half_with_the_other():
    samples, pairs = split_half_samples(_two_prefixes())
    # A: halves (1, 1) and (0, 1); B: (0, 0) and (0, 1)
    assert [(s.prediction, s.outcome) for s in samples] == [
        (1.0, 0),
        (1.0, 1),
        (0.5, 1),
        (0.5, 1),
        (0.0, 0),
        (0.0, 1),
        (0.5, 0),
        (0.5, 0),
    ]
    # the pair inside each half, predicted from the other half's mean as a known rate
    assert [(s.prediction, s.outcome) for s in pairs] == [(0.0, 1), (0.5, 0), (0.0, 1), (0.5, 0)]


def test_predictor_table_by_hand():
    table = predictor_table(_two_prefixes())
    rows = table["overall"]["predictors"]
    assert list(rows) == list(PREDICTORS)
    ours, beta, oracle = rows["ours"], rows["beta"], rows["oracle"]
    # ours: 3 x 0.2^2 + 0.8^2 at each prefix over 8 samples;
    # A's 3 successes above B's 3 failures, B's success below A's failure
    assert ours["brier"] == pytest.approx(1.52 / 8) and ours["auc"] == pytest.approx(0.9)
    assert ours["auc_within_prompt"] == pytest.approx(0.9) and ours["prefixes"] == 2 and ours["samples"] == 8
    assert ours["prefix_pairs"] == ours["prefix_pairs_within_prompt"] == 1
    assert (ours["mixed_predicted"], ours["mixed_observed"]) == pytest.approx((0.32, 0.5))
    # one score for every prefix of the prompt: all ties
    assert beta["auc"] == 0.5 and beta["brier"] == pytest.approx((0.84 + 1.24) / 8)
    assert ours["brier_vs_beta"] == pytest.approx(1.52 / 2.08) and beta["brier_vs_beta"] == 1.0
    # oracle: 1.5 at each prefix;
    # A's successes (1.0, 0.5, 0.5) over B's failures (0, 0.5, 0.5): 7 of 9, B's over A's: 0 of 1
    assert oracle["brier"] == pytest.approx(3 / 8) and oracle["auc"] == pytest.approx(0.7)
    assert (oracle["mixed_predicted"], oracle["mixed_observed"]) == pytest.approx((0.25, 0.5))
    ceiling = table["overall"]["ceiling"]
    # k (n - k) / (n (n - 1)) = 3 / 12 at both; the 4-sample means 0.75 and 0.25 order 9 of 10 pairs
    assert ceiling["brier_floor"] == pytest.approx(0.25) and ceiling["auc_in_sample"] == pytest.approx(0.9)
    assert sorted(table["by_depth"]) == [0, 1]
    assert math.isnan(table["by_depth"][0]["predictors"]["ours"]["auc"])  # one prefix per depth
    assert table["by_depth"][1]["predictors"]["depth"]["brier"] == pytest.approx((3 * 0.09 + 0.49) / 4)


def test_noise_ceiling_of_prefixes_that_never_vary_is_zero():
    prefixes = [DiagnosticPrefix("a", 0, (1, 1), {}), DiagnosticPrefix("b", 1, (0, 0), {})]
    ceiling = noise_ceiling(prefixes)
    assert ceiling["brier_floor"] == 0.0 and ceiling["auc_in_sample"] == 1.0
    assert math.isnan(ceiling["auc_within_prompt_in_sample"])


def test_bad_options_are_one_line_errors():
    result = subprocess.run(
        [sys.executable, "-m", "tracerl", "bench", "predictor", "--continuations", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    expected = "tracerl bench predictor: --continuations must be even and >= 2: the oracle is scored by halves"
    assert result.stderr.strip() == expected


@pytest.mark.vllm
@pytest.mark.slow
def test_a_tiny_run_on_a_real_engine(random_model_dir, tmp_path):
    """A random policy never answers: every outcome is a failure, which fixes what each
    predictor must say, and the later version (the same weights, reloaded) measures alike."""
    from bench.predictor import PredictorBenchOptions, run_predictor_bench
    from tracerl.config import load_config
    from tracerl.upconfig import UpConfig

    up = load_config(
        UpConfig,
        ROOT / "configs" / "default.yaml",
        [
            f"model_dir={random_model_dir}",
            "allocator.core.group_size=2",
            "allocator.core.batch_prompts=2",
            "allocator.core.max_turns=3",
            "allocator.tasks.train_tasks=32",
        ],
    )
    options = PredictorBenchOptions(
        prompts=4,
        prefixes=5,
        continuations=2,
        train_branches=1,
        models=(str(random_model_dir),),
        results_dir=str(tmp_path),
    )
    payload = run_predictor_bench(options, up)
    assert json.loads((tmp_path / "predictor.json").read_text()) == payload
    assert "## " + str(random_model_dir) in (tmp_path / "predictor.md").read_text()
    assert [run["policy_version"] for run in payload["versions"]] == [0, 1]
    for run in payload["versions"]:
        assert run["trees"]["train"] == 2 and run["trees"]["diagnostic"] == 2
        assert run["trees"]["root_group_success"] == 0.0
        # two root steps (2 leaves each) and one branch of 2 per training tree were learnt
        assert run["model"]["samples_seen"] > 0 and run["model"]["revision"] == 1
        prefixes = run["prefixes"]
        assert 1 <= len(prefixes) <= 5 and {p["depth"] for p in prefixes} <= {0, 1, 2}
        for prefix in prefixes:
            assert prefix["outcomes"] == [0, 0]
            forecasts = prefix["forecasts"]
            # Beta(1, 1) after the tree's 2 failed leaves; the depth rate of a policy that never succeeds
            assert forecasts["beta"] == [pytest.approx(1 / 4), 4.0]
            assert forecasts["depth"] == [0.0, None]
            assert 0.0 < forecasts["ours"][0] < forecasts["shared"][0] < 1.0  # failures only pull the posterior down
        oracle = run["scores"]["overall"]["predictors"]["oracle"]
        assert oracle["brier"] == 0.0 and oracle["samples"] == 2 * len(prefixes)
        assert run["generated_turns"] > 0
