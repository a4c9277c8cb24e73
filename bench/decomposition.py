"""Why a strategy learns as it does: what each TRACE stage adds, where the budget went, and
how well the predictor knew, read back from recorded `tracerl bench learning` results.

A study is several results files whose runs may be compared at equal cost: the same steps,
turn budget, horizon, task set and held-out curve. Anything else that differs between the
files (say ``allocator.core.min_per_prompt``) names the variant, next to its strategy, so a
side study of one setting is paired against the main table's grpo on the seed indices both
ran.

Per variant: the paired difference to grpo of the held-out greedy curve mean and final point
(mean and standard error), mixed root and branch groups per 100 generated turns, prompts
(trees) and leaves trained per step, the share of settled turns spent on root rollouts, and
the share of trained tokens with a non-zero advantage. Per prefix depth, for strategies with
a predictor: its prequential AUC and Brier score against the per-prompt Beta baseline's.
The last three come from the runs' own metrics files, when their directories are still here.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.learning import BASELINE, run_scores
from bench.runs import RESULTS_DIR, RunOutcome, json_safe, run_weight_drift
from bench.stats import mean_se, paired_difference

#: Settings that make runs comparable at equal cost: a study refuses files that differ here.
EQUAL_COST_KEYS = (
    "learner.training.max_steps",
    "allocator.core.step_budget_turns",
    "allocator.core.max_turns",
    "allocator.tasks.env",
    "allocator.tasks.train_tasks",
    "curve.eval_tasks",
    "curve.every_versions",
)
#: Settings that say nothing about what a run did (the run limit only decides whether it
#: finished, and a run that did not is left out).
IGNORED_KEYS = ("seeds", "run.run_id", "run.run_dir", "timeout_s")
MAX_DEPTH = 5


@dataclass(frozen=True)
class RunSignals:
    """What a run's own metrics files say about its batches and its predictor."""

    prompts_per_step: float | None = None
    leaves_per_step: float | None = None
    nonzero_advantage_token_share: float | None = None
    root_turn_share: float | None = None
    grad_norm: float | None = None
    # ‖final − initial weights‖₂ (bench/drift.py), where both models are still on disk.
    weight_drift: float | None = None
    # depth -> (predictor AUC, predictor Brier, Beta baseline Brier), where recorded.
    predictor_by_depth: dict[int, tuple[float | None, float | None, float | None]] = field(default_factory=dict)


def variant_label(strategy: str, settings: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """The strategy, plus every setting in which this file differs from the study's first one."""
    keys = sorted((set(settings) | set(base)) - set(IGNORED_KEYS))
    differing = [f"{k}={settings.get(k)}" for k in keys if settings.get(k) != base.get(k)]
    return f"{strategy} [{', '.join(differing)}]" if differing else strategy


def check_equal_cost(settings: Mapping[str, Any], base: Mapping[str, Any], name: str) -> None:
    unequal = [k for k in EQUAL_COST_KEYS if settings.get(k) != base.get(k)]
    if unequal:
        detail = ", ".join(f"{k}: {settings.get(k)!r} vs {base.get(k)!r}" for k in unequal)
        raise ValueError(f"{name} was not run at the study's cost and cannot be compared ({detail})")


def collect_variants(results: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, list[RunOutcome]]:
    """Runs by variant label from ``(name, results payload)`` pairs, the first one the base.
    A (variant, seed index) recorded twice keeps its first run."""
    if not results:
        raise ValueError("a study needs at least one results file")
    base = results[0][1].get("settings", {})
    variants: dict[str, list[RunOutcome]] = {}
    for name, payload in results:
        settings = payload.get("settings", {})
        check_equal_cost(settings, base, name)
        for strategy, records in payload.get("runs", {}).items():
            label = variant_label(strategy, settings, base)
            kept = variants.setdefault(label, [])
            seen = {r.seed for r in kept}
            kept.extend(r for r in map(RunOutcome.from_dict, records) if r.seed not in seen)
    return variants


def _mean(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(clean) if clean else None


def decomposition_rows(
    variants: Mapping[str, Sequence[RunOutcome]], signals: Mapping[tuple[str, int], RunSignals], steps: int
) -> list[dict[str, Any]]:
    """One row per variant: paired differences to grpo and the means of its runs' signals.
    Only runs that trained every step and have a held-out curve count."""
    complete = {
        label: [r for r in runs if r.returncode == 0 and r.learner_steps >= steps and r.heldout_curve]
        for label, runs in variants.items()
    }
    baseline = {r.seed: run_scores(r) for r in complete.get(BASELINE, []) if r.seed is not None}
    rows = []
    for label, runs in complete.items():
        ours = {r.seed: run_scores(r) for r in runs if r.seed is not None}
        run_signals = [signals.get((label, r.seed), RunSignals()) for r in runs if r.seed is not None]
        row: dict[str, Any] = {"variant": label, "seeds": len(runs)}
        for score in ("heldout_greedy_curve_mean", "heldout_greedy_final"):
            summary = mean_se([s[score] for s in ours.values()])
            row[score] = {"mean": summary.mean, "se": summary.se}
            if label != BASELINE:
                diff = paired_difference(
                    {s: v[score] for s, v in ours.items()}, {s: v[score] for s, v in baseline.items()}
                )
                row[f"{score}_vs_grpo"] = {"mean": diff.mean, "se": diff.se, "seeds": len(diff.seeds)}
        row["mixed_root_groups_per_100_turns"] = _mean([r.mixed_root_groups_per_100_turns for r in runs])
        row["mixed_groups_per_100_turns"] = _mean([r.mixed_groups_per_100_turns for r in runs])
        for name in SIGNALS:
            row[name] = _mean([getattr(s, name) for s in run_signals])
        depths: dict[int, dict[str, float | None]] = {}
        for depth in range(MAX_DEPTH + 1):
            triples = [s.predictor_by_depth[depth] for s in run_signals if depth in s.predictor_by_depth]
            if triples:
                auc, brier, beta = (_mean([t[i] for t in triples]) for i in range(3))
                depths[depth] = {"auc": auc, "brier": brier, "beta_brier": beta}
        row["predictor_by_depth"] = depths
        rows.append(row)
    return rows


#: Per-run signals averaged over a variant's runs.
SIGNALS = (
    "prompts_per_step",
    "leaves_per_step",
    "nonzero_advantage_token_share",
    "root_turn_share",
    "grad_norm",
    "weight_drift",
)


def drift_curve_correlation(
    variants: Mapping[str, Sequence[RunOutcome]], signals: Mapping[tuple[str, int], RunSignals]
) -> tuple[float, int]:
    """Pearson's r between weight drift and the greedy curve mean over every run that has
    both, and how many runs that is (r is NaN below three)."""
    pairs = [
        (drift, run.heldout_greedy_curve_mean)
        for label, runs in variants.items()
        for run in runs
        if run.seed is not None and run.heldout_curve
        for drift in [signals.get((label, run.seed), RunSignals()).weight_drift]
        if drift is not None and not math.isnan(drift)
    ]
    if len(pairs) < 3:
        return math.nan, len(pairs)
    xs, ys = zip(*pairs, strict=True)
    try:
        return statistics.correlation(xs, ys), len(pairs)
    except statistics.StatisticsError:  # every drift (or every score) the same
        return math.nan, len(pairs)


def signals_from_metrics(learner_rows: Sequence[Mapping[str, Any]], allocator_last: Mapping[str, Any]) -> RunSignals:
    """A run's signals from its learner step records and its allocator's last metrics record."""
    steps = [r for r in learner_rows if "train.trees" in r]

    def per_step(key: str) -> float | None:
        return _mean([float(r[key]) for r in steps if key in r])

    depths = {}
    for depth in range(MAX_DEPTH + 1):
        keys = (f"core.predictor_depth{depth}_auc", f"core.predictor_depth{depth}_brier")
        if any(k in allocator_last for k in keys):
            depths[depth] = (
                allocator_last.get(keys[0]),
                allocator_last.get(keys[1]),
                allocator_last.get(f"core.beta_baseline_depth{depth}_brier"),
            )
    return RunSignals(
        prompts_per_step=per_step("train.trees"),
        leaves_per_step=per_step("batch.leaves"),
        nonzero_advantage_token_share=per_step("train.nonzero_advantage_token_share"),
        root_turn_share=allocator_last.get("core.root_turn_share"),
        grad_norm=per_step("train.grad_norm"),
        predictor_by_depth=depths,
    )


def read_run_signals(run_dir: Path | None) -> RunSignals:
    """A run's signals from its directory; empty when the directory is gone."""
    metrics = None if run_dir is None else Path(run_dir) / "metrics"
    if metrics is None or not (metrics / "learner.jsonl").is_file():
        return RunSignals()
    learner = [json.loads(line) for line in (metrics / "learner.jsonl").read_text().splitlines() if line.strip()]
    allocator_path = metrics / "allocator.jsonl"
    lines = allocator_path.read_text().splitlines() if allocator_path.is_file() else []
    allocator_last = json.loads(lines[-1]) if lines else {}
    return replace(signals_from_metrics(learner, allocator_last), weight_drift=run_weight_drift(metrics.parent))


def _pm(block: Mapping[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    if not block or block.get("mean") is None or math.isnan(block["mean"]):
        return "-"
    sign = "+" if signed else ""
    se = block.get("se")
    tail = "" if se is None or math.isnan(se) else f" ± {se:.{digits}f}"
    return f"{block['mean']:{sign}.{digits}f}{tail}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def decomposition_markdown(
    rows: Sequence[Mapping[str, Any]], sources: Sequence[str], drift_correlation: tuple[float, int] = (math.nan, 0)
) -> str:
    lines = [
        "# Decomposition: what each stage adds, where the budget went, what the predictor knew",
        "",
        f"From {', '.join(f'`bench/results/{s}.json`' for s in sources)}. Differences are paired "
        "against grpo on the seed indices both completed (mean ± standard error).",
        "",
        "| variant | seeds | greedy curve mean | Δ curve mean vs grpo | Δ final vs grpo | mixed roots / 100 turns "
        "| mixed roots + branches / 100 turns | prompts / step | leaves / step | root turn share "
        "| non-zero-advantage tokens | grad norm | weight drift |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['seeds']} | {_pm(row['heldout_greedy_curve_mean'])} "
            f"| {_pm(row.get('heldout_greedy_curve_mean_vs_grpo'), signed=True)} "
            f"| {_pm(row.get('heldout_greedy_final_vs_grpo'), signed=True)} "
            f"| {_num(row['mixed_root_groups_per_100_turns'])} | {_num(row['mixed_groups_per_100_turns'])} "
            f"| {_num(row['prompts_per_step'], 1)} | {_num(row['leaves_per_step'], 1)} "
            f"| {_num(row['root_turn_share'])} | {_num(row['nonzero_advantage_token_share'])} "
            f"| {_num(row['grad_norm'], 3)} | {_num(row['weight_drift'], 3)} |"
        )
    r, runs = drift_correlation
    if runs:
        lines += [
            "",
            f"Weight drift is ‖final − initial weights‖₂. Adam sizes each update by the gradient's own history, so "
            f"a larger gradient does not move the weights further; how far they move depends on how consistently "
            f"the steps point the same way. Across the {runs} runs with both, Pearson's r between weight drift and "
            f"the greedy curve mean is {_num(r, 2)}.",
        ]
    with_predictor = [row for row in rows if row["predictor_by_depth"]]
    if with_predictor:
        lines += [
            "",
            "Predictor per prefix depth (prequential, at each run's end; mean over seeds): AUC, and Brier "
            "against the per-prompt Beta baseline's.",
            "",
            "| variant | depth | AUC | Brier | Beta Brier |",
            "|---|---|---|---|---|",
        ]
        for row in with_predictor:
            for depth, scores in sorted(row["predictor_by_depth"].items()):
                lines.append(
                    f"| {row['variant']} | {depth} | {_num(scores['auc'], 3)} | {_num(scores['brier'], 3)} "
                    f"| {_num(scores['beta_brier'], 3)} |"
                )
    return "\n".join(lines) + "\n"


def run_decomposition(sources: Sequence[str], results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Read the named results files, write ``decomposition.{md,json}`` beside them."""
    payloads = []
    for name in sources:
        path = results_dir / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no learning results at {path}")
        payloads.append((name, json.loads(path.read_text())))
    variants = collect_variants(payloads)
    steps = int(payloads[0][1]["settings"]["learner.training.max_steps"])
    signals = {
        (label, run.seed): read_run_signals(run.run_dir)
        for label, runs in variants.items()
        for run in runs
        if run.seed is not None
    }
    rows = decomposition_rows(variants, signals, steps)
    r, runs = drift_curve_correlation(variants, signals)
    md, js = results_dir / "decomposition.md", results_dir / "decomposition.json"
    md.write_text(decomposition_markdown(rows, sources, (r, runs)))
    payload = {"sources": list(sources), "rows": rows, "drift_curve_correlation": {"r": r, "runs": runs}}
    js.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    return md, js
