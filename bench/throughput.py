"""System throughput: tokens/s and trees/s, asynchronous against synchronous, 1 against 2 actors.

Synchronous here means on-policy lockstep: the allocator may not run ahead of the learner
(``staleness_eta=0``, one open step), so actors idle while the learner trains and the
learner idles while actors sample. Asynchronous lets the allocator run ``eta`` steps ahead.
Both take the same number of learner steps with the learner and the actors pinned to
separate cores, and the speed-up is the ratio of their training wall times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.runs import RunOutcome, run_up, write_results


def rates(outcome: RunOutcome) -> dict[str, float | None]:
    seconds = outcome.training_seconds
    if not seconds:
        return {"tokens_per_s": None, "turns_per_s": None, "trees_per_s": None, "training_seconds": seconds}
    return {
        "tokens_per_s": outcome.generated_tokens / seconds,
        "turns_per_s": outcome.generated_turns / seconds,
        "steps_per_s": outcome.learner_steps / seconds,
        "training_seconds": seconds,
    }


def run_throughput_bench(overrides: dict[str, Any], work_dir: Path, eta: int, timeout_s: float) -> dict[str, Any]:
    base = {**overrides, "eval_tasks": 0, "cpus.actors": "0", "cpus.learner": "1"}
    async_run = {**base, "allocator.core.staleness_eta": eta, "allocator.core.max_open_steps": eta + 1}
    variants = {
        "sync-1actor": {**base, "allocator.core.staleness_eta": 0, "allocator.core.max_open_steps": 1},
        "async-1actor": async_run,
        # Scaling: with 2 cores, two actors pinned to the actors' one core can only share it.
        # These two runs leave every process free to use both cores, so the second actor can
        # take what the first and the learner leave idle.
        "scale-1actor": {
            **async_run,
            "cpus.actors": "",
            "cpus.learner": "",
        },
        "scale-2actors": {
            **async_run,
            "num_actors": 2,
            "cpus.actors": "",
            "cpus.learner": "",
        },
    }
    results: dict[str, Any] = {}
    for name, settings in variants.items():
        outcome = run_up(f"tput-{name}", work_dir / f"tput-{name}", settings, timeout_s)
        results[name] = {"outcome": outcome.as_dict(), **rates(outcome)}
        print(f"[bench throughput] {name}: {results[name]['training_seconds']} s, {rates(outcome)}", flush=True)

    def ratio(a: str, b: str, key: str) -> float | None:
        x, y = results[a].get(key), results[b].get(key)
        return (x / y) if x and y else None

    summary = {
        "async_over_sync_speedup": ratio("sync-1actor", "async-1actor", "training_seconds"),
        "two_over_one_actor_tokens": ratio("scale-2actors", "scale-1actor", "tokens_per_s"),
        "two_over_one_actor_steps": ratio("scale-2actors", "scale-1actor", "steps_per_s"),
    }
    payload = {"settings": {"eta": eta, **base}, "variants": results, "summary": summary}
    lines = [
        "# System throughput",
        "",
        "| variant | training s | tokens/s | turns/s | learner steps/s |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {_fmt(r.get('training_seconds'))} | {_fmt(r.get('tokens_per_s'))} "
            f"| {_fmt(r.get('turns_per_s'))} | {_fmt(r.get('steps_per_s'), 3)} |"
        )
    lines += [
        "",
        f"Asynchronous / synchronous speed-up (same learner steps): {_fmt(summary['async_over_sync_speedup'], 2)}x",
        f"Unpinned, 2 actors / 1 actor: generated tokens/s {_fmt(summary['two_over_one_actor_tokens'], 2)}x, "
        f"learner steps/s {_fmt(summary['two_over_one_actor_steps'], 2)}x",
    ]
    write_results("throughput", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"
