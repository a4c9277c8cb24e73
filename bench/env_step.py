"""What one branch point costs an environment: restore a snapshot, take a step, snapshot again.

    python -m bench.env_step [--cycles 200]

TRACE branches mid-episode, so an actor restores an environment from a prefix's snapshot
for every continuation. The target is well under a model turn: 2 ms per cycle on this
machine. Every environment the project generates is timed after one warm-up step (indexes
and solvers built), as the median of several repeats, in wall time and thread CPU time
(which tells a loaded machine from slow code). Printed, and written to
bench/results/env_step.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.runs import write_results
from environments.registry import make_env, make_tasks

GENERATED = ("multihop", "frozenlake", "sokoban", "math", "toolcall", "webshop")
TARGET_MS = 2.0


def time_cycles(name: str, cycles: int, repeats: int = 5) -> dict[str, float]:
    env = make_env(name)
    env.reset(make_tasks(name, "train", 1, seed=0)[0])
    state = env.snapshot()
    action = env.expert_action()
    env.step(action)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(cycles):
            env.restore(state)
            env.step(action)
            env.snapshot()
        walls.append((time.perf_counter() - wall) / cycles * 1e3)
        cpus.append((time.thread_time() - cpu) / cycles * 1e3)
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args()
    results = {name: time_cycles(name, args.cycles) for name in GENERATED}
    lines = [
        "# Environment branch point: restore + step + snapshot",
        "",
        f"Median of 5 repeats of {args.cycles} cycles; target under {TARGET_MS} ms of CPU per cycle.",
        "",
        "| environment | wall ms / cycle | CPU ms / cycle | under target |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['wall_ms']:.3f} | {r['cpu_ms']:.3f} | {r['cpu_ms'] < TARGET_MS} |")
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results("env_step", {"cycles": args.cycles, "target_ms": TARGET_MS, "environments": results}, markdown)


if __name__ == "__main__":
    main()
