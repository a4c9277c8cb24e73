"""Decision latency of the allocator core with about 10,000 open nodes.

    python -m bench.allocator_latency [--nodes 10000] [--calls 2000] [--rounds 15]

One TRACE step is filled with root chains from the ground-truth simulator until about
``--nodes`` nodes are open, then three costs are measured on this machine:

- ``schedule_idle``: a schedule() call while work is outstanding, the call the shell makes
  on every tick (it checks timeouts, step opening and whether a round can be planned);
- ``schedule_plan_round``: the schedule() call that plans a stage-2 round over every open
  node (predictor over all candidate prefixes, greedy V_pref allocation) and builds the
  first ``max_items_per_call`` WorkItems;
- ``schedule_issue_queued``: the following calls that hand out the rest of that round;
- ``on_node``: ingesting one TurnNode (dedup, backup, features, budget).

Results are printed and written to bench/results/allocator_latency.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from allocator.core import ActorLoad, AllocatorCore, AllocatorCoreConfig
from allocator.simulator import SimulatedActor, SimulatorConfig, make_prompts

RESULTS = Path(__file__).parent / "results" / "allocator_latency.json"


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    logging.disable(logging.INFO)

    max_turns = 4
    rollouts = args.nodes // max_turns
    sim = SimulatorConfig(num_prompts=4 * rollouts, max_turns=max_turns)
    rng = np.random.default_rng(0)
    prompts = make_prompts(sim, rng)
    config = AllocatorCoreConfig(
        strategy="trace",
        step_budget_turns=2 * rollouts * max_turns,
        root_fraction=0.5,
        batch_prompts=rollouts // 4,
        max_turns=max_turns,
        max_open_steps=1,
    )
    core = AllocatorCore(config, [p.task for p in prompts], seed=0)
    actor = SimulatedActor(sim, prompts)
    actors = [ActorLoad(f"a{i}", 0, 64) for i in range(8)]

    # Stage 1: the first call plans the roots (DP over the candidate pool); later calls
    # hand the planned roots out, max_items_per_call at a time.
    stage1_calls, ingest, held_back = [], [], None
    while True:
        t0 = time.perf_counter()
        routed = core.schedule(0.0, actors)
        stage1_calls.append(time.perf_counter() - t0)
        if not routed:
            break
        nodes = [n for r in routed for n in actor.rollout(r.item, actor_id="a0", policy_version=0, rng=rng, now=0.0)]
        if held_back is None:
            held_back, nodes = nodes[-1], nodes[:-1]  # keeps one chain open, so idle calls do not plan
        for node in nodes:
            t0 = time.perf_counter()
            core.on_node(node, 0.0)
            ingest.append(time.perf_counter() - t0)
    stage1_s = stage1_calls[0]
    open_nodes = core.metrics()["open_nodes"]

    idle = []
    for i in range(args.calls):
        t0 = time.perf_counter()
        out = core.schedule(1.0 + i * 1e-3, actors)
        idle.append(time.perf_counter() - t0)
        assert not out
    core.on_node(held_back, 2.0)

    plan, drain, issued = [], [], 0
    for _ in range(args.rounds):
        trial = copy.deepcopy(core)
        gc.collect()  # the deepcopy's garbage is a benchmark artefact, not the allocator's cost
        t0 = time.perf_counter()
        out = trial.schedule(3.0, actors)
        plan.append(time.perf_counter() - t0)
        issued = len(out)
        while out:
            t0 = time.perf_counter()
            out = trial.schedule(3.0, actors)
            drain.append(time.perf_counter() - t0)
            issued += len(out)
            if len(drain) > 10_000:
                break

    results = {
        "open_nodes": open_nodes,
        "open_trees": core.metrics()["open_trees"],
        "stage1_roots_call_ms": stage1_s * 1e3,
        "schedule_idle": _percentiles(idle),
        "schedule_plan_round": {**_percentiles(plan), "branch_items_planned": issued},
        "schedule_issue_queued": _percentiles(drain),
        "max_items_per_call": config.max_items_per_call,
        "on_node": _percentiles(ingest),
        "target": "schedule p99 < 5 ms",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
