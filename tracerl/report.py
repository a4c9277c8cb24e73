"""The run report: reward, effective ratio, held-out success and the success predictor's
quality against samples spent.

Everything is derived from the metrics JSONL files, so a report can be redrawn for any
run directory, finished or still running (``tracerl report RUN_DIR``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tracerl.metrics import metrics_path, read_metrics


@dataclass
class RunCurves:
    """Series aligned on the x axis "generated turns so far" (the budget unit)."""

    samples: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    effective_ratio: list[float] = field(default_factory=list)
    heldout_samples: list[float] = field(default_factory=list)
    heldout_greedy: list[float] = field(default_factory=list)
    heldout_sampled: list[float] = field(default_factory=list)
    heldout_versions: list[int] = field(default_factory=list)
    # The allocator's success predictor (allocator/evaluation.py), cumulative over its window.
    predictor_samples: list[float] = field(default_factory=list)
    predictor: dict[str, list[float]] = field(default_factory=dict)


#: The predictor curves the report draws: metric key -> legend label.
PREDICTOR_CURVES = {
    "predictor_auc": "AUC at decisions",
    "predictor_loo_auc": "AUC, every node (leave-one-out)",
    "predictor_loo_auc_within_prompt": "AUC within a prompt (leave-one-out)",
    "predictor_brier_vs_beta": "Brier / per-prompt baseline's (at decisions)",
}


def predictor_summary(run_dir: str | Path) -> dict[str, float]:
    """The allocator's last reported predictor scores (``core.predictor*``, ``core.beta*``)."""
    last: dict[str, float] = {}
    for record in read_metrics(metrics_path(run_dir, "allocator")):
        for key, value in record.items():
            if key.startswith(("core.predictor", "core.beta", "core.shared_model")) and isinstance(value, (int, float)):
                last[key.removeprefix("core.")] = value
    return last


def collect_curves(run_dir: str | Path) -> RunCurves:
    curves = RunCurves()
    spent = 0.0
    spent_at_version: dict[int, float] = {0: 0.0}
    for record in read_metrics(metrics_path(run_dir, "learner")):
        if "batch.turns" not in record:
            continue
        # Each tree node is one generated turn, the unit the budget is counted in.
        spent += float(record["batch.turns"])
        curves.samples.append(spent)
        curves.reward.append(float(record.get("batch.reward_mean") or 0.0))
        curves.effective_ratio.append(float(record.get("batch.effective_ratio") or 0.0))
        spent_at_version[int(record.get("policy_version", 0))] = spent
    for record in read_metrics(metrics_path(run_dir, "allocator")):
        if "core.predictor_auc" in record and "core.budget_turns_used" in record:
            curves.predictor_samples.append(float(record["core.budget_turns_used"]))
            for key in PREDICTOR_CURVES:
                value = record.get(f"core.{key}")
                curves.predictor.setdefault(key, []).append(float("nan") if value is None else float(value))
        if "heldout.policy_version" not in record:
            continue
        version = int(record["heldout.policy_version"])
        curves.heldout_versions.append(version)
        curves.heldout_samples.append(spent_at_version.get(version, spent))
        curves.heldout_greedy.append(float(record["heldout.greedy_success"]))
        curves.heldout_sampled.append(float(record["heldout.sampled_success"]))
    return curves


def plot_report(run_dir: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    curves = collect_curves(run_dir)
    before_after = _read_json(run_dir / "eval_before.json"), _read_json(run_dir / "eval_after.json")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    ax_reward, ax_ratio, ax_heldout, ax_predictor = axes
    ax_reward.plot(curves.samples, curves.reward, color="tab:blue")
    ax_reward.set_title("training reward (mean leaf)")
    ax_ratio.plot(curves.samples, curves.effective_ratio, color="tab:orange")
    ax_ratio.set_title("effective ratio (mixed root groups)")
    ax_heldout.plot(curves.heldout_samples, curves.heldout_greedy, marker="o", label="greedy")
    ax_heldout.plot(curves.heldout_samples, curves.heldout_sampled, marker="s", label="sampled (T=1)")
    before, after = before_after
    if before and after:
        x_end = curves.samples[-1] if curves.samples else 1.0
        for mode, style in (("greedy", "--"), ("sampled", ":")):
            ax_heldout.plot(
                [0, x_end],
                [before[f"{mode}_success"], after[f"{mode}_success"]],
                linestyle=style,
                color="grey",
                label=f"tracerl eval {mode}: before → after",
            )
    ax_heldout.set_title("held-out success")
    ax_heldout.legend(fontsize=8)
    for key, label in PREDICTOR_CURVES.items():
        if curves.predictor.get(key):
            ax_predictor.plot(curves.predictor_samples, curves.predictor[key], label=label)
    ax_predictor.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax_predictor.set_title("success predictor (allocator)")
    ax_predictor.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("generated turns (budget units)")
        ax.set_ylim(-0.02, 1.02 if ax is not ax_predictor else 1.3)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"TRACE-RL run: {run_dir.name}")
    fig.tight_layout()
    out = run_dir / "report.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
