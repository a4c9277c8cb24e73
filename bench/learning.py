"""Equal-cost learning comparison of allocation strategies.

Every strategy trains the same embedded model on the same tasks for the same number of
learner steps with the same per-step turn budget; only ``allocator.core.strategy`` differs.
Seeds are paired: seed index s gives every strategy the same run seed (learner, actor engine,
allocator), so the same initial state and the same prompt draws where the strategy allows
(``allocator.selection.paired_draw``).

Each run's held-out curve comes from its learner checkpoints, every ``eval_every`` versions
and at the end, scored greedy and sampled on ``eval_tasks`` held-out tasks after the run
(``bench.curve``); version 0 is the initial model. A run is scored by the trapezoid mean of
its curve and by its last point (``bench.stats``). A run that exits with an error, stops
short or has no complete curve is left out of every mean and counted as failed.

Written to bench/results/: ``<results-name>.{json,md,png}`` (every run and a table of means
over seeds) and the headline, ``headline.json`` for the main table or
``<results-name>-headline.json`` for a side study: per strategy the held-out scores, mixed
root groups and mixed root-and-branch groups per 100 generated turns, TRACE's predictor AUC,
and for every strategy but grpo the mean and standard error of its paired difference to grpo.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.curve import evaluate_curve
from bench.runs import RESULTS_DIR, RunOutcome, json_safe, run_up, write_results
from bench.stats import mean_se, paired_difference

DEFAULT_STRATEGIES = ("trace", "grpo", "tree-random", "entropy", "gps", "dps", "tsr-bon")
BASELINE = "grpo"
MAIN_RESULTS = "learning"
#: A run's held-out scores; "final" is the curve's last point.
SCORES = ("heldout_greedy_curve_mean", "heldout_greedy_final", "heldout_sampled_curve_mean", "heldout_sampled_final")
#: Per-strategy means of these run fields complete the headline (seconds: training and eval apart).
SIGNAL_AND_COST = (
    "mixed_root_groups_per_100_turns",
    "mixed_groups_per_100_turns",
    "mixed_branch_groups_per_100_turns",
    "informative_token_share",
    "effective_ratio",
    "mean_grad_norm",
    "weight_drift",
    "generated_turns",
    "wall_seconds",
    "training_seconds",
    "eval_seconds",
)


def mean_spread(values: Sequence[float | None]) -> tuple[float, float]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def run_scores(run: RunOutcome) -> dict[str, float]:
    """A completed run's scores: its held-out curve is whole, so none is missing."""
    scores = {
        "heldout_greedy_curve_mean": run.heldout_greedy_curve_mean,
        "heldout_greedy_final": run.heldout_greedy_after,
        "heldout_sampled_curve_mean": run.heldout_sampled_curve_mean,
        "heldout_sampled_final": run.heldout_sampled_after,
    }
    missing = sorted(name for name, value in scores.items() if value is None)
    if missing:
        raise ValueError(f"run {run.name} has no {', '.join(missing)}")
    return {name: value for name, value in scores.items() if value is not None}


def run_failure(run: RunOutcome, steps: int) -> str | None:
    """Why a run cannot count, or None: it must exit cleanly, take every learner step and have
    a held-out curve from version 0 to its last step."""
    if run.returncode != 0:
        return f"exit code {run.returncode}"
    if run.learner_steps < steps:
        return f"{run.learner_steps} of {steps} learner steps"
    versions = [p.policy_version for p in run.heldout_curve]
    if not versions or versions[0] != 0 or versions[-1] < steps:
        return f"held-out curve incomplete (versions {versions}, wanted 0 to {steps})"
    return None


def split_runs(
    outcomes: Mapping[str, Sequence[RunOutcome]], steps: int
) -> tuple[dict[str, list[RunOutcome]], dict[str, dict[str, str]]]:
    """(completed runs, {run name: why it failed}) per strategy."""
    completed: dict[str, list[RunOutcome]] = {}
    failed: dict[str, dict[str, str]] = {}
    for strategy, runs in outcomes.items():
        completed[strategy], failed[strategy] = [], {}
        for run in runs:
            reason = run_failure(run, steps)
            if reason is None:
                completed[strategy].append(run)
            else:
                failed[strategy][run.name] = reason
    return completed, failed


def _mean(values: Sequence[float | None]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(clean) if clean else math.nan


def headline(outcomes: Mapping[str, Sequence[RunOutcome]], steps: int) -> dict[str, dict[str, Any]]:
    """Per strategy: completed seeds, mean held-out scores and their SE, signal and cost, and
    (but for the baseline) the paired difference to the baseline over the seeds both completed."""
    completed, failed = split_runs(outcomes, steps)
    by_seed = {s: {r.seed: run_scores(r) for r in runs if r.seed is not None} for s, runs in completed.items()}
    rows: dict[str, dict[str, Any]] = {}
    for strategy, runs in completed.items():
        row: dict[str, Any] = {
            "seeds": len(runs),
            "seed_indices": sorted(r.seed for r in runs if r.seed is not None),
            "failed_runs": len(failed[strategy]),
            "failures": failed[strategy],
        }
        for score in SCORES:
            summary = mean_se([run_scores(r)[score] for r in runs])
            row[score], row[f"{score}_se"] = summary.mean, summary.se
        for field in SIGNAL_AND_COST:
            row[field] = _mean([getattr(r, field) for r in runs])
        if strategy == "trace":
            row["predictor_auc"] = _mean([r.predictor_auc for r in runs])
        if strategy != BASELINE:
            row[f"paired_diff_vs_{BASELINE}"] = paired_block(by_seed[strategy], by_seed.get(BASELINE, {}))
        rows[strategy] = row
    return rows


def paired_block(ours: Mapping[int, dict[str, float]], theirs: Mapping[int, dict[str, float]]) -> dict[str, Any]:
    """Every score's paired difference; ``mean`` and ``se`` at the top are the greedy curve mean's."""
    diffs = {
        score: paired_difference({s: v[score] for s, v in ours.items()}, {s: v[score] for s, v in theirs.items()})
        for score in SCORES
    }
    headline_diff = diffs["heldout_greedy_curve_mean"]
    return {
        "mean": headline_diff.mean,
        "se": headline_diff.se,
        "seeds": len(headline_diff.seeds),
        "seed_indices": list(headline_diff.seeds),
        **{score: {"mean": d.mean, "se": d.se} for score, d in diffs.items()},
    }


def aggregate(
    outcomes: Mapping[str, Sequence[RunOutcome]], failed: Mapping[str, Mapping[str, str]] | None = None
) -> list[dict[str, Any]]:
    """Mean and spread over seeds of the given (completed) runs, per strategy."""
    rows = []
    for strategy, runs in outcomes.items():
        row: dict[str, Any] = {
            "strategy": strategy,
            "seeds": len(runs),
            "failed_runs": len((failed or {}).get(strategy, {})),
        }
        for field in (
            "heldout_greedy_before",
            "heldout_greedy_after",
            "heldout_greedy_curve_mean",
            "heldout_sampled_before",
            "heldout_sampled_after",
            "heldout_sampled_curve_mean",
            "effective_ratio",
            "mixed_root_groups_per_100_turns",
            "mixed_groups_per_100_turns",
            "informative_token_share",
            "mean_grad_norm",
            "weight_drift",
            "generated_turns",
            "generated_tokens",
            "wall_seconds",
            "training_seconds",
            "eval_seconds",
        ):
            row[field] = mean_spread([getattr(r, field) for r in runs])
        rows.append(row)
    return rows


def _cell(pair: tuple[float, float], digits: int = 3) -> str:
    mean, spread = pair
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        "# Equal-cost strategy comparison",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
        "Mean ± std over completed seeds. Held-out success: the curve mean (trapezoid over policy versions) and "
        "the last point, greedy and sampled; mixed groups per 100 generated turns: root groups, and root plus "
        "branch groups. Grad norm: the learner's mean per step; weight drift: ‖final − initial weights‖₂ "
        "(bench/drift.py), which Adam keeps nearly equal across strategies whatever their grad norm.",
        "",
        "| strategy | seeds (failed) | greedy curve mean | greedy final | sampled curve mean | sampled final "
        "| effective ratio | mixed roots / 100 turns | mixed roots + branches / 100 turns | informative tokens "
        "| grad norm | weight drift | generated turns | generated tokens | training s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['seeds']} ({row['failed_runs']}) | {_cell(row['heldout_greedy_curve_mean'])} "
            f"| {_cell(row['heldout_greedy_after'])} | {_cell(row['heldout_sampled_curve_mean'])} "
            f"| {_cell(row['heldout_sampled_after'])} | {_cell(row['effective_ratio'])} "
            f"| {_cell(row['mixed_root_groups_per_100_turns'], 2)} | {_cell(row['mixed_groups_per_100_turns'], 2)} "
            f"| {_cell(row['informative_token_share'])} | {_cell(row['mean_grad_norm'])} "
            f"| {_cell(row['weight_drift'])} | {_cell(row['generated_turns'], 0)} "
            f"| {_cell(row['generated_tokens'], 0)} | {_cell(row['training_seconds'], 0)} "
            f"| {_cell(row['eval_seconds'], 0)} |"
        )
    if rows:
        before = rows[0]["heldout_greedy_before"], rows[0]["heldout_sampled_before"]
        lines += [
            "",
            f"Before training (all strategies start here): greedy {_cell(before[0])}, sampled {_cell(before[1])}.",
        ]
    return "\n".join(lines) + "\n"


def headline_markdown(rows: Mapping[str, dict[str, Any]]) -> str:
    """The paired comparison to the baseline; an SE needs two paired seeds ("-" otherwise)."""

    def num(value: float | None, digits: int = 3, signed: bool = False) -> str:
        if value is None or math.isnan(value):
            return "-"
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"

    def diff(row: dict[str, Any], score: str) -> str:
        block = row.get(f"paired_diff_vs_{BASELINE}")
        if block is None:
            return "(baseline)"
        return f"{num(block[score]['mean'], signed=True)} ± {num(block[score]['se'])}"

    lines = [
        f"## Paired against {BASELINE}",
        "",
        f"Mean difference to {BASELINE} over the seed indices both completed ± its standard error.",
        "",
        "| strategy | paired seeds | Δ greedy curve mean | Δ greedy final | Δ sampled curve mean "
        "| Δ sampled final | predictor AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for strategy, row in rows.items():
        block = row.get(f"paired_diff_vs_{BASELINE}")
        paired = "-" if block is None else str(block["seeds"])
        lines.append(
            f"| {strategy} | {paired} | {diff(row, 'heldout_greedy_curve_mean')} | {diff(row, 'heldout_greedy_final')} "
            f"| {diff(row, 'heldout_sampled_curve_mean')} | {diff(row, 'heldout_sampled_final')} "
            f"| {num(row.get('predictor_auc'))} |"
        )

    def total(field: str) -> float:
        return sum(row[field] * row["seeds"] for row in rows.values() if not math.isnan(row[field]))

    lines += [
        "",
        f"Completed runs took {total('wall_seconds'):.0f} s in `tracerl up` ({total('training_seconds'):.0f} s from "
        f"the learner's first to its last step) and {total('eval_seconds'):.0f} s in held-out evaluation.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["strategy"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (field, title) in zip(
        axes,
        (
            ("heldout_greedy_curve_mean", "held-out greedy success (curve mean)"),
            ("heldout_sampled_curve_mean", "held-out sampled success (curve mean)"),
            ("mixed_groups_per_100_turns", "mixed root + branch groups / 100 turns"),
        ),
        strict=True,
    ):
        means = [r[field][0] for r in rows]
        spreads = [r[field][1] for r in rows]
        ax.bar(names, means, yerr=spreads, capsize=4, color=["tab:red" if n == "trace" else "tab:grey" for n in names])
        ax.set_title(title)
        if field.startswith("heldout"):
            ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Equal-cost comparison (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_order(strategies: Collection[str]) -> list[str]:
    """The comparison's usual order (trace first), then any other strategy by name."""
    known = [s for s in DEFAULT_STRATEGIES if s in strategies]
    return known + sorted(set(strategies) - set(known))


def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    # Which seeds ran is per run; results recorded before that also listed a seed count here.
    # The run limit only decides whether a run finished, and an unfinished run never counts.
    return {k: v for k, v in settings.items() if k not in ("seeds", "timeout_s")}


def recorded_outcomes(
    previous: dict[str, Any] | None, settings: dict[str, Any], planned: Collection[tuple[str, int]]
) -> dict[str, list[RunOutcome]]:
    """Runs kept from an earlier bench result, only if it was made with the same settings (same
    steps, budget, evaluation, config: otherwise they would not be comparable), except the
    (strategy, seed index) runs about to be made again."""
    if not previous or _comparable(previous.get("settings", {})) != _comparable(settings):
        return {}
    kept: dict[str, list[RunOutcome]] = {}
    for strategy, records in previous.get("runs", {}).items():
        runs = [RunOutcome.from_dict(r) for r in records]
        kept[strategy] = [r for r in runs if (strategy, r.seed) not in planned]
    return {s: runs for s, runs in kept.items() if runs}


def check_results_name(name: str) -> None:
    """The results' file stem must name a file directly under bench/results/."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"the results name must be a plain file stem such as 'learning', got {name!r}")


def headline_path(results_name: str) -> Path:
    """``headline.json`` belongs to the main table; a side study's headline is named after it."""
    return RESULTS_DIR / ("headline.json" if results_name == MAIN_RESULTS else f"{results_name}-headline.json")


def bench_run_settings(overrides: dict[str, Any], steps: int, eval_tasks: int, eval_every: int) -> dict[str, Any]:
    """What every run is given on top of the user's config: the learner keeps a checkpoint every
    ``eval_every`` versions (all of them) for the curve, and `tracerl up`'s own before/after
    evaluation and the allocator's in-run probes are off (the curve replaces both)."""
    if eval_tasks < 1 or eval_every < 1:
        raise ValueError("eval_tasks and eval_every must be >= 1")
    return {
        **overrides,
        "eval_tasks": 0,
        "allocator.heldout.every_versions": 0,
        "learner.training.checkpoint_every_steps": eval_every,
        "learner.training.keep_checkpoints": steps // eval_every + 1,
    }


def describe_run(run: RunOutcome) -> str:
    curve = run.heldout_curve
    held_out = (
        f"greedy {curve[0].greedy_success:.3f} -> {curve[-1].greedy_success:.3f} (curve mean "
        f"{run.heldout_greedy_curve_mean:.3f}), sampled {curve[0].sampled_success:.3f} -> "
        f"{curve[-1].sampled_success:.3f} (curve mean {run.heldout_sampled_curve_mean:.3f})"
        if curve
        else "no held-out curve"
    )
    training = run.training_seconds
    return (
        f"{run.name}: rc={run.returncode} steps={run.learner_steps} | run {run.wall_seconds:.0f} s "
        f"(learner steps {training if training is None else round(training)} s) | eval {len(curve)} points "
        f"{run.eval_seconds or 0:.0f} s | {held_out} | mixed / 100 turns: roots "
        f"{run.mixed_root_groups_per_100_turns:.2f}, roots + branches {run.mixed_groups_per_100_turns:.2f}"
    )


def run_learning_bench(
    strategies: list[str],
    seeds: int,
    overrides: dict[str, Any],
    work_dir: Path,
    timeout_s: float,
    merge: bool = False,
    results_name: str = MAIN_RESULTS,
    eval_tasks: int = 500,
    eval_every: int = 5,
    first_seed: int = 0,
) -> dict[str, Any]:
    check_results_name(results_name)
    steps = int(overrides["learner.training.max_steps"])
    run_settings = bench_run_settings(overrides, steps, eval_tasks, eval_every)
    # The strategy is what varies; the base config's own choice would only mislead here.
    settings = {
        **{k: v for k, v in run_settings.items() if k != "allocator.core.strategy"},
        "curve.eval_tasks": eval_tasks,
        "curve.every_versions": eval_every,
    }
    seed_indices = range(first_seed, first_seed + seeds)
    planned = {(strategy, seed) for strategy in strategies for seed in seed_indices}
    kept: dict[str, list[RunOutcome]] = {}
    if merge:
        previous_path = RESULTS_DIR / f"{results_name}.json"
        previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
        kept = recorded_outcomes(previous, settings, planned)
        if previous and not kept:
            print("[bench learning] --merge: no recorded run with these settings to keep", flush=True)
        elif kept:
            counts = ", ".join(f"{s} x{len(runs)}" for s, runs in kept.items())
            print(f"[bench learning] --merge: keeping recorded runs of {counts}", flush=True)
    outcomes: dict[str, list[RunOutcome]] = {s: kept.get(s, []) for s in table_order([*kept, *strategies])}
    payload: dict[str, Any] = {}
    for seed in seed_indices:
        for strategy in strategies:  # seeds outermost: a cut-short bench still compares strategies
            name = f"learn-{strategy}-s{seed}"
            paired = {**run_settings, "allocator.core.strategy": strategy, "run.seed": seed}
            run = run_up(name, work_dir / name, paired, timeout_s)
            # A run that failed or stopped short does not count: scoring it would only cost time.
            trained = run.returncode == 0 and run.learner_steps >= steps
            curve, eval_seconds = evaluate_curve(run.run_dir, eval_tasks, timeout_s) if trained else ((), None)
            run = dataclasses.replace(
                run,
                strategy=strategy,
                seed=seed,
                heldout_curve=curve,
                eval_seconds=eval_seconds,
                heldout_greedy_before=curve[0].greedy_success if curve else None,
                heldout_greedy_after=curve[-1].greedy_success if curve else None,
                heldout_sampled_before=curve[0].sampled_success if curve else None,
                heldout_sampled_after=curve[-1].sampled_success if curve else None,
            )
            outcomes[strategy] = sorted([*outcomes[strategy], run], key=lambda r: (r.seed is None, r.seed))
            print(f"[bench learning] {describe_run(run)}", flush=True)
            # Written after every run, so that an interrupted bench leaves what it finished for --merge.
            payload = write_learning_results(outcomes, settings, steps, results_name)
    if not payload:  # nothing planned: rewrite the merged results as they are
        payload = write_learning_results(outcomes, settings, steps, results_name)
    print((RESULTS_DIR / f"{results_name}.md").read_text())
    return payload


def write_learning_results(
    outcomes: dict[str, list[RunOutcome]], settings: dict[str, Any], steps: int, results_name: str
) -> dict[str, Any]:
    completed, failed = split_runs(outcomes, steps)
    rows = aggregate(completed, failed)
    heads = headline(outcomes, steps)
    payload = {"settings": settings, "rows": rows, "runs": {s: [r.as_dict() for r in rs] for s, rs in outcomes.items()}}
    write_results(results_name, payload, markdown_table(rows, settings) + "\n" + headline_markdown(heads))
    headline_path(results_name).write_text(
        json.dumps(
            json_safe(
                {
                    "settings": settings,
                    "baseline": BASELINE,
                    "curve_mean": "trapezoid mean of the held-out curve over policy versions (bench/stats.py)",
                    "se": "sample std / sqrt(n) over completed seeds; null where undefined (fewer than 2 seeds)",
                    "strategies": heads,
                }
            ),
            indent=2,
        )
    )
    plot(rows, RESULTS_DIR / f"{results_name}.png")
    return payload
