"""Equal-cost learning comparison of allocation strategies.

Every strategy trains the same embedded model on the same tasks for the same number of
learner steps with the same per-step turn budget; only ``allocator.core.strategy`` (and the
seed) differ. Reported per strategy, mean and spread over seeds: held-out success after
training (greedy and sampled), effective ratio, mixed groups per 100 turns, the learner's
informative-token share, generated turns and tokens, and wall time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.runs import RESULTS_DIR, RunOutcome, run_up, write_results

DEFAULT_STRATEGIES = ("trace", "grpo", "tree-random", "entropy", "gps", "dps", "tsr-bon")


def mean_spread(values: list[float]) -> tuple[float, float]:
    clean = [v for v in values if v is not None]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def aggregate(outcomes: dict[str, list[RunOutcome]]) -> list[dict[str, Any]]:
    rows = []
    for strategy, runs in outcomes.items():
        row: dict[str, Any] = {"strategy": strategy, "seeds": len(runs), "failed_runs": sum(r.returncode != 0 for r in runs)}
        for field in (
            "heldout_greedy_before",
            "heldout_greedy_after",
            "heldout_sampled_before",
            "heldout_sampled_after",
            "effective_ratio",
            "mixed_groups_per_100_turns",
            "informative_token_share",
            "generated_turns",
            "generated_tokens",
            "wall_seconds",
        ):
            row[field] = mean_spread([getattr(r, field) for r in runs])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    def cell(pair: tuple[float, float], digits: int = 3) -> str:
        mean, spread = pair
        return f"{mean:.{digits}f} ± {spread:.{digits}f}"

    lines = [
        "# Equal-cost strategy comparison",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        "",
        "| strategy | held-out greedy (after) | held-out sampled (after) | effective ratio | mixed / 100 turns "
        "| informative tokens | generated turns | generated tokens | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {cell(row['heldout_greedy_after'])} | {cell(row['heldout_sampled_after'])} "
            f"| {cell(row['effective_ratio'])} | {cell(row['mixed_groups_per_100_turns'], 2)} "
            f"| {cell(row['informative_token_share'])} | {cell(row['generated_turns'], 0)} "
            f"| {cell(row['generated_tokens'], 0)} | {cell(row['wall_seconds'], 0)} |"
        )
    before = rows[0]["heldout_greedy_before"], rows[0]["heldout_sampled_before"]
    lines += ["", f"Before training (all strategies start here): greedy {cell(before[0])}, sampled {cell(before[1])}."]
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
            ("heldout_greedy_after", "held-out greedy success"),
            ("heldout_sampled_after", "held-out sampled success"),
            ("effective_ratio", "effective ratio"),
        ),
    ):
        means = [r[field][0] for r in rows]
        spreads = [r[field][1] for r in rows]
        ax.bar(names, means, yerr=spreads, capsize=4, color=["tab:red" if n == "trace" else "tab:grey" for n in names])
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Equal-cost comparison (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_order(strategies: list[str]) -> list[str]:
    """The comparison's usual order (trace first), then any other strategy by name."""
    known = [s for s in DEFAULT_STRATEGIES if s in strategies]
    return known + sorted(set(strategies) - set(known))


def recorded_outcomes(previous: dict[str, Any] | None, settings: dict[str, Any], skip: list[str]) -> dict[str, list[RunOutcome]]:
    """Runs of other strategies kept from an earlier bench result, only if it was made with the
    same settings (same steps, budget, seeds, config): otherwise they would not be equal-cost."""
    if not previous or previous.get("settings") != settings:
        return {}
    return {
        strategy: [RunOutcome.from_dict(r) for r in runs]
        for strategy, runs in previous.get("runs", {}).items()
        if strategy not in skip
    }


def check_results_name(name: str) -> None:
    """The results' file stem must name a file directly under bench/results/."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"the results name must be a plain file stem such as 'learning', got {name!r}")


def run_learning_bench(
    strategies: list[str],
    seeds: int,
    overrides: dict[str, Any],
    work_dir: Path,
    timeout_s: float,
    merge: bool = False,
    results_name: str = "learning",
) -> dict[str, Any]:
    check_results_name(results_name)
    # The strategy is what varies; the base config's own choice would only mislead here.
    settings = {"seeds": seeds, **{k: v for k, v in overrides.items() if k != "allocator.core.strategy"}}
    kept: dict[str, list[RunOutcome]] = {}
    if merge:
        previous_path = RESULTS_DIR / f"{results_name}.json"
        previous = json.loads(previous_path.read_text()) if previous_path.is_file() else None
        kept = recorded_outcomes(previous, settings, strategies)
        if previous and not kept:
            print("[bench learning] --merge: the recorded results used other settings; nothing kept", flush=True)
        elif kept:
            print(f"[bench learning] --merge: keeping recorded runs of {', '.join(kept)}", flush=True)
    outcomes: dict[str, list[RunOutcome]] = {s: kept.get(s, []) for s in table_order([*kept, *strategies])}
    for seed in range(seeds):
        for strategy in strategies:  # seeds outermost: a cut-short bench still compares strategies
            name = f"learn-{strategy}-s{seed}"
            run_settings = {**overrides, "allocator.core.strategy": strategy, "run.seed": seed}
            outcome = run_up(name, work_dir / name, run_settings, timeout_s)
            outcomes[strategy].append(outcome)
            print(
                f"[bench learning] {name}: rc={outcome.returncode} steps={outcome.learner_steps} "
                f"greedy {outcome.heldout_greedy_before} -> {outcome.heldout_greedy_after} "
                f"eff.ratio {outcome.effective_ratio:.3f} wall {outcome.wall_seconds:.0f}s",
                flush=True,
            )
    rows = aggregate(outcomes)
    payload = {"settings": settings, "rows": rows, "runs": {s: [r.as_dict() for r in rs] for s, rs in outcomes.items()}}
    json_path, md_path = write_results(results_name, payload, markdown_table(rows, settings))
    plot(rows, RESULTS_DIR / f"{results_name}.png")
    print(md_path.read_text())
    return payload
