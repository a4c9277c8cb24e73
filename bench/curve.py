"""A finished run's held-out learning curve: its kept learner checkpoints, scored after the run.

The learner keeps a checkpoint every ``eval_every`` versions and at its last step; after the
run, `tracerl eval --checkpoints` scores each one greedy and sampled on the same held-out
tasks, on one vLLM engine that reloads each checkpoint's weights in place. Version 0 is the
initial model every run of a benchmark shares, scored once and cached. Done after the run
rather than by the allocator's in-run probes because each point is then exactly its version
(a probe issued at version v is served by whatever newer version the actor holds by then),
evaluation never competes with training for the actor's core, and its cost is measured apart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.runs import CurvePoint

#: `tracerl eval --checkpoints` writes its records here, inside the run directory.
CHECKPOINT_EVAL_FILE = "eval_checkpoints.json"
CHECKPOINT_EVAL_LOG = "eval_checkpoints.log"


def success_by_mode(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {r["mode"]: float(r["success_rate"]) for r in results}


def curve_points(initial: dict[str, Any] | None, checkpoints: Sequence[dict[str, Any]]) -> tuple[CurvePoint, ...]:
    """The curve, oldest first, from the initial model's eval (``tracerl.up.run_eval`` data, at
    version 0) and the records of `tracerl eval --checkpoints` (one per checkpoint)."""
    points: dict[int, CurvePoint] = {}
    if initial:
        points[0] = CurvePoint(0, float(initial["greedy_success"]), float(initial["sampled_success"]))
    for record in checkpoints:
        success = success_by_mode(record["results"])
        version = int(record["policy_version"])
        points[version] = CurvePoint(version, success["greedy"], success["sampled"])
    return tuple(points[v] for v in sorted(points))


def read_run_config(run_dir: Path) -> Any:
    """The `tracerl up` config the run resolved (``<run_dir>/config/up.yaml``)."""
    from tracerl.config import load_config
    from tracerl.upconfig import UpConfig

    return load_config(UpConfig, run_dir / "config" / "up.yaml", [])


def run_model_dir(run_dir: Path) -> str:
    """The initial model the run's learner started from (``<run_dir>/config/learner.yaml``)."""
    return yaml.safe_load((run_dir / "config" / "learner.yaml").read_text())["model"]["model_dir"]


def evaluate_curve(run_dir: Path, tasks: int, timeout_s: float) -> tuple[tuple[CurvePoint, ...], float]:
    """Score a finished run's checkpoints on ``tasks`` held-out tasks (drawn with the run's
    ``allocator.heldout.options``); (the curve, seconds spent).

    A failed evaluation leaves the curve short (the log is ``<run_dir>/eval_checkpoints.log``),
    which the benchmark counts as a failed run."""
    from tracerl.up import cached_eval, eval_argv, eval_cpus

    started = time.time()
    up = read_run_config(run_dir)
    model_dir, env, cpus = run_model_dir(run_dir), up.allocator.tasks.env, eval_cpus(up)
    options = up.allocator.heldout.options
    initial = cached_eval(model_dir, env, tasks, options, run_dir / "eval_initial.json", cpus)
    out = run_dir / CHECKPOINT_EVAL_FILE
    out.unlink(missing_ok=True)
    argv = eval_argv(model_dir, env, tasks, options, out, cpus, "--checkpoints", str(run_dir / "checkpoints"))
    with (run_dir / CHECKPOINT_EVAL_LOG).open("w") as log:
        # Its own process group: on a timeout the engine process it started goes too.
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            log.write(f"\ntracerl eval --checkpoints did not finish within {timeout_s:.0f} s\n")
    records = json.loads(out.read_text()) if out.is_file() else []
    return curve_points(initial, records), time.time() - started
