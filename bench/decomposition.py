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
The signals after the mixed-group counts come from the runs' own directories. Run directories
are scratch and get deleted, so ``decomposition.json`` also keeps each run's signals, and a
later decomposition reads a run's signals back from there once its directory is gone.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.learning import BASELINE, run_scores
from bench.outcome_variance import DepthVariance, variance_by_depth
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
#: How a row or the drift-curve correlation says it was taken over from the previous file.
CARRIED_FROM_PREVIOUS = "previous decomposition (run directories gone)"


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

    @property
    def is_empty(self) -> bool:
        return self == RunSignals()

    def filled_from(self, other: RunSignals) -> RunSignals:
        """These signals, with those missing here taken from ``other``, an older reading of the
        same run (a directory may have lost its final model but kept its metrics)."""
        kept = {name: getattr(self, name) for name in SIGNALS if getattr(self, name) is not None}
        return replace(other, **kept, predictor_by_depth=self.predictor_by_depth or other.predictor_by_depth)

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {name: getattr(self, name) for name in SIGNALS}
        record["predictor_by_depth"] = {
            str(depth): {"auc": auc, "brier": brier, "beta_brier": beta}
            for depth, (auc, brier, beta) in sorted(self.predictor_by_depth.items())
        }
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunSignals:
        """Inverse of ``as_record``."""
        depths = {
            int(depth): (scores.get("auc"), scores.get("brier"), scores.get("beta_brier"))
            for depth, scores in record.get("predictor_by_depth", {}).items()
        }
        return cls(**{name: record.get(name) for name in SIGNALS}, predictor_by_depth=depths)


def run_identity(run: RunOutcome) -> dict[str, Any]:
    """What tells one run from a later one at the same seed: a re-run reuses its directory's
    name, but not the time its learner first stepped."""
    return {"run_dir": None if run.run_dir is None else str(run.run_dir), "first_step_at": run.first_step_at}


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
        row["signal_runs"] = sum(not s.is_empty for s in run_signals)
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


def resolve_run_signals(
    variants: Mapping[str, Sequence[RunOutcome]],
    from_directories: Mapping[tuple[str, int], RunSignals],
    previous: Mapping[str, Any],
) -> dict[tuple[str, int], RunSignals]:
    """Each run's signals: what its directory says, and whatever it no longer says (all of it
    once the directory is gone) from the previous decomposition's record of the same run."""
    records = previous.get("run_signals", {})
    signals = {}
    for label, runs in variants.items():
        for run in runs:
            if run.seed is None:
                continue
            record = records.get(label, {}).get(str(run.seed))
            # A record of an earlier run at this seed says nothing about this one.
            same_run = record is not None and record.get("run") == run_identity(run)
            recorded = RunSignals.from_record(record) if same_run else RunSignals()
            signals[(label, run.seed)] = from_directories.get((label, run.seed), RunSignals()).filled_from(recorded)
    return signals


def run_signals_records(
    variants: Mapping[str, Sequence[RunOutcome]], signals: Mapping[tuple[str, int], RunSignals]
) -> dict[str, dict[str, dict[str, Any]]]:
    """The per-run record ``decomposition.json`` keeps: variant -> seed -> the run and its signals."""
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for label, runs in variants.items():
        for run in runs:
            run_signals = signals.get((label, run.seed)) if run.seed is not None else None
            if run_signals is not None and not run_signals.is_empty:
                record = {"run": run_identity(run), **run_signals.as_record()}
                records.setdefault(label, {})[str(run.seed)] = record
    return records


def _has_signals(row: Mapping[str, Any]) -> bool:
    return bool(row.get("predictor_by_depth")) or any(row.get(name) is not None for name in SIGNALS)


def carry_previous_signal_means(rows: Sequence[Mapping[str, Any]], previous: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows where no run has signals take the previous decomposition's signal means for the
    same variant, when those were over as many seeds: a file written before per-run records
    were kept holds only the means, and the runs they came from may be gone. Over another
    number of seeds they would describe other runs, so they are not taken."""
    before = {row["variant"]: row for row in previous.get("rows", [])}
    carried = []
    for row in rows:
        old = before.get(row["variant"])
        if row["signal_runs"] or old is None or old.get("seeds") != row["seeds"] or not _has_signals(old):
            carried.append(dict(row))
            continue
        means = {name: old.get(name) for name in SIGNALS}
        carried.append(
            {
                **row,
                **means,
                "predictor_by_depth": old.get("predictor_by_depth", {}),
                # How many runs the carried means cover, where the previous file said.
                "signal_runs": old.get("signal_runs"),
                "signals_from": CARRIED_FROM_PREVIOUS,
            }
        )
    return carried


def correlation_or_carried(current: tuple[float, int], previous: Mapping[str, Any]) -> dict[str, Any]:
    """The drift-curve correlation over the current runs, or, where too few of them (fewer than
    three) still have a weight drift for one, the previous decomposition's, marked as carried."""
    r, runs = current
    old = previous.get("drift_curve_correlation") or {}
    if runs < 3 and old.get("r") is not None and old.get("runs"):
        return {"r": old["r"], "runs": old["runs"], "from": CARRIED_FROM_PREVIOUS}
    return {"r": r, "runs": runs}


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


def _variant_cell(row: Mapping[str, Any]) -> str:
    return f"{row['variant']} †" if row.get("signals_from") else row["variant"]


def _seeds_cell(row: Mapping[str, Any]) -> str:
    covered = row.get("signal_runs")
    if covered is not None and covered < row["seeds"]:
        return f"{row['seeds']} ({covered} with signals)"
    return str(row["seeds"])


def decomposition_markdown(
    rows: Sequence[Mapping[str, Any]],
    sources: Sequence[str],
    drift_correlation: Mapping[str, Any] | None = None,
    ground_truth: Sequence[tuple[str, Sequence[DepthVariance]]] = (),
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
            f"| {_variant_cell(row)} | {_seeds_cell(row)} | {_pm(row['heldout_greedy_curve_mean'])} "
            f"| {_pm(row.get('heldout_greedy_curve_mean_vs_grpo'), signed=True)} "
            f"| {_pm(row.get('heldout_greedy_final_vs_grpo'), signed=True)} "
            f"| {_num(row['mixed_root_groups_per_100_turns'])} | {_num(row['mixed_groups_per_100_turns'])} "
            f"| {_num(row['prompts_per_step'], 1)} | {_num(row['leaves_per_step'], 1)} "
            f"| {_num(row['root_turn_share'])} | {_num(row['nonzero_advantage_token_share'])} "
            f"| {_num(row['grad_norm'], 3)} | {_num(row['weight_drift'], 3)} |"
        )
    notes = []
    if any(row.get("signals_from") for row in rows):
        notes.append(
            "† Signal columns and predictor scores carried unchanged from the previous decomposition: these "
            "variants' run directories are gone and it kept only their means, over the same number of seeds."
        )
    if any(_seeds_cell(row) != str(row["seeds"]) for row in rows):
        notes.append(
            'Where the seeds read "n (k with signals)", the columns from prompts / step on (and the predictor '
            "scores) are the means over the k runs whose directory or recorded signals are still here."
        )
    if notes:
        lines += ["", " ".join(notes)]
    correlation = drift_correlation or {}
    r, runs = correlation.get("r", math.nan), correlation.get("runs", 0)
    if runs and r is not None and not math.isnan(r):
        over = (
            f"Across the {runs} runs with both in the previous decomposition (carried: too few of the current "
            f"runs still have a weight drift)"
            if "from" in correlation
            else f"Across the {runs} runs with both"
        )
        lines += [
            "",
            f"Weight drift is ‖final − initial weights‖₂. Adam sizes each update by the gradient's own history, so "
            f"a larger gradient does not move the weights further; how far they move depends on how consistently "
            f"the steps point the same way. {over}, Pearson's r between weight drift and the greedy curve mean "
            f"is {_num(r, 2)}.",
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
                    f"| {_variant_cell(row)} | {depth} | {_num(scores['auc'], 3)} | {_num(scores['brier'], 3)} "
                    f"| {_num(scores['beta_brier'], 3)} |"
                )
    if ground_truth:
        lines += ["", *ground_truth_markdown(ground_truth)]
    return "\n".join(lines) + "\n"


def ground_truth_markdown(ground_truth: Sequence[tuple[str, Sequence[DepthVariance]]]) -> list[str]:
    """Where the learnable signal is, per policy and depth, from the predictor bench's Monte-Carlo
    continuations (bench/outcome_variance.py)."""
    groups = sorted({y.group for _, rows in ground_truth for row in rows for y in row.yields})
    lines = [
        "Where the signal is, from Monte-Carlo ground truth (`bench/results/predictor.json`: each diagnostic "
        "prefix continued n times). A leaf's outcome variance V̄(1 − V̄) splits into what lies between prefixes "
        "and what lies within one, E[V(1 − V)], the only part a group-relative advantage can learn from. For a "
        "group of m rollouts on a random prefix of that depth: the chance it is mixed, which is also its "
        "informative rollouts per rollout, and its mixed groups per rollout (unbiased estimates from the n "
        "continuations).",
        "",
        "| policy | depth | prefixes | mean success | V̄(1 − V̄) | E[V(1 − V)] | within share | "
        + " | ".join(f"P(mixed), m={m}" for m in groups)
        + " | "
        + " | ".join(f"mixed groups / rollout, m={m}" for m in groups)
        + " |",
        "|" + "---|" * (7 + 2 * len(groups)),
    ]
    for label, rows in ground_truth:
        for row in rows:
            by_group = {y.group: y for y in row.yields}
            mixed = [_num(by_group[m].mixed_probability, 3) if m in by_group else "-" for m in groups]
            per_rollout = [_num(by_group[m].mixed_groups_per_rollout, 3) if m in by_group else "-" for m in groups]
            lines.append(
                f"| {label} | {row.depth} | {row.prefixes} | {_num(row.mean_success, 3)} "
                f"| {_num(row.total_variance, 3)} | {_num(row.within_variance, 3)} | {_num(row.within_share, 2)} "
                f"| {' | '.join(mixed)} | {' | '.join(per_rollout)} |"
            )
    return lines


def read_ground_truth(path: Path) -> list[tuple[str, list[DepthVariance]]]:
    """Per policy version of a `tracerl bench predictor` result, its variance split by depth;
    empty when there is no such file."""
    if not path.is_file():
        return []
    return [
        (
            str(version.get("label", version.get("policy_version"))).split(" (")[0],
            variance_by_depth(version["prefixes"]),
        )
        for version in json.loads(path.read_text()).get("versions", [])
        if version.get("prefixes")
    ]


def run_decomposition(sources: Sequence[str], results_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Read the named results files, write ``decomposition.{md,json}`` beside them. Signals of
    runs whose directories are gone come from the ``decomposition.json`` already there."""
    payloads = []
    for name in sources:
        path = results_dir / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no learning results at {path}")
        payloads.append((name, json.loads(path.read_text())))
    variants = collect_variants(payloads)
    steps = int(payloads[0][1]["settings"]["learner.training.max_steps"])
    md, js = results_dir / "decomposition.md", results_dir / "decomposition.json"
    previous = json.loads(js.read_text()) if js.is_file() else {}
    from_directories = {
        (label, run.seed): read_run_signals(run.run_dir)
        for label, runs in variants.items()
        for run in runs
        if run.seed is not None
    }
    signals = resolve_run_signals(variants, from_directories, previous)
    rows = carry_previous_signal_means(decomposition_rows(variants, signals, steps), previous)
    correlation = correlation_or_carried(drift_curve_correlation(variants, signals), previous)
    ground_truth = read_ground_truth(results_dir / "predictor.json")
    md.write_text(decomposition_markdown(rows, sources, correlation, ground_truth))
    payload = {
        "sources": list(sources),
        "rows": rows,
        "drift_curve_correlation": correlation,
        "run_signals": run_signals_records(variants, signals),
        "ground_truth_by_depth": {label: [asdict(r) for r in rows_] for label, rows_ in ground_truth},
    }
    js.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
    return md, js
