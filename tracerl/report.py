"""The run report: reward, effective ratio and held-out success against samples spent.

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
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_reward, ax_ratio, ax_heldout = axes
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
    for ax in axes:
        ax.set_xlabel("generated turns (budget units)")
        ax.set_ylim(-0.02, 1.02)
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
