"""Whole training runs as benchmark samples: start `tracerl up`, then read its artefacts.

The learning and throughput benchmarks compare runs that differ in one setting (strategy,
seed, synchrony, actor count) and are otherwise identical, so every number comes from the
same code path a user runs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml

from bench.drift import weight_distance
from bench.harness import fresh_run_dir
from bench.stats import curve_mean
from tracerl.config import nest_dotted
from tracerl.metrics import metrics_path, read_metrics

RESULTS_DIR = Path(__file__).parent / "results"
#: Marks a directory made by ``run_up``, so a rerun may delete it.
RUN_MARKER = ".bench-run"
#: The exit code recorded for a run stopped at its time limit (as GNU ``timeout`` reports it).
TIMED_OUT = 124


@dataclass(frozen=True)
class CurvePoint:
    """Held-out success of the policy at one version, greedy and sampled on the same tasks."""

    policy_version: int
    greedy_success: float
    sampled_success: float


@dataclass(frozen=True)
class RunOutcome:
    name: str
    run_dir: Path
    returncode: int
    wall_seconds: float
    learner_steps: int
    heldout_greedy_before: float | None
    heldout_greedy_after: float | None
    heldout_sampled_before: float | None
    heldout_sampled_after: float | None
    effective_ratio: float
    informative_token_share: float
    # Groups that carry a gradient per 100 generated turns: root groups (all rollouts of a
    # prompt) and branch groups (siblings under an expanded prefix), each with both outcomes.
    mixed_root_groups_per_100_turns: float
    generated_turns: float
    generated_tokens: float
    first_step_at: float | None
    last_step_at: float | None
    mixed_branch_groups_per_100_turns: float = 0.0
    predictor_auc: float | None = None
    strategy: str = ""
    seed: int | None = None
    # Held-out success at the run's kept checkpoints, oldest first, and what scoring them cost.
    heldout_curve: tuple[CurvePoint, ...] = ()
    eval_seconds: float | None = None
    # The learner's mean gradient norm per step, and how far training moved the weights
    # (‖final − initial‖₂, bench/drift.py): Adam makes the second nearly independent of the first.
    mean_grad_norm: float | None = None
    weight_drift: float | None = None

    @property
    def training_seconds(self) -> float | None:
        """Wall time from the learner's first to its last step: excludes start-up and eval."""
        if self.first_step_at is None or self.last_step_at is None:
            return None
        return self.last_step_at - self.first_step_at

    @property
    def mixed_groups_per_100_turns(self) -> float:
        return self.mixed_root_groups_per_100_turns + self.mixed_branch_groups_per_100_turns

    @property
    def heldout_greedy_curve_mean(self) -> float:
        return curve_mean([(p.policy_version, p.greedy_success) for p in self.heldout_curve])

    @property
    def heldout_sampled_curve_mean(self) -> float:
        return curve_mean([(p.policy_version, p.sampled_success) for p in self.heldout_curve])

    def as_dict(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        out["heldout_curve"] = [p.__dict__ for p in self.heldout_curve]
        out["training_seconds"] = self.training_seconds
        for derived in ("mixed_groups_per_100_turns", "heldout_greedy_curve_mean", "heldout_sampled_curve_mean"):
            out[derived] = getattr(self, derived)
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunOutcome:
        """Inverse of ``as_dict`` (derived fields dropped): a recorded run read back from results."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        if "mixed_root_groups_per_100_turns" not in values:  # recorded before branch groups were counted
            values["mixed_root_groups_per_100_turns"] = record["mixed_groups_per_100_turns"]
        values["run_dir"] = Path(values["run_dir"]) if values.get("run_dir") else None
        values["heldout_curve"] = tuple(CurvePoint(**p) for p in values.get("heldout_curve", ()))
        return cls(**values)


def run_up(name: str, run_dir: Path, overrides: dict[str, Any], timeout_s: float = 3600) -> RunOutcome:
    """One `tracerl up` run; settings go through a YAML file so values keep their types.

    The run starts from an empty directory: left in place, an earlier sample's checkpoint
    would be resumed and its summary read as this run's.
    """
    fresh_run_dir(run_dir, RUN_MARKER, "learning/throughput")
    settings = {**overrides, "run.run_id": name, "run.run_dir": str(run_dir)}
    config_path = run_dir.parent / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(nest_dotted(settings), sort_keys=False))
    argv = [sys.executable, "-m", "tracerl", "up", "--config", str(config_path)]
    started = time.time()
    log_path = run_dir.parent / f"{name}.up.log"
    with log_path.open("w") as log:
        code = run_until_stopped(argv, log, timeout_s)
    return summarise_run(name, run_dir, code, time.time() - started)


def run_until_stopped(argv: list[str], log: Any, timeout_s: float, stop_grace_s: float = 300.0) -> int:
    """Run ``argv`` to its end; its exit code, or ``TIMED_OUT`` after ``timeout_s``.

    At the time limit, and when the benchmark itself is interrupted (Ctrl-C), the child gets
    SIGTERM and up to ``stop_grace_s`` to stop the processes it started: `tracerl up` starts
    every role in a session of its own, so killing `up` outright would leave a whole cluster
    running. Only a child still there after the grace is killed.
    """
    # Its own session: a Ctrl-C in the terminal reaches the benchmark, which stops the child.
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # SIGTERM's default would end the benchmark at once, with the child left running.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _in_main_thread() else None
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.write(f"\n[bench] not done within {timeout_s:.0f} s: stopping it\n")
        log.flush()
        stop_child(child, stop_grace_s)
        return TIMED_OUT
    except BaseException:
        stop_child(child, stop_grace_s)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def stop_child(child: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL to the child's process group once ``grace_s`` has passed."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def summarise_run(name: str, run_dir: Path, returncode: int, wall_seconds: float) -> RunOutcome:
    steps = [r for r in read_metrics(metrics_path(run_dir, "learner")) if "step" in r]
    allocator = [r for r in read_metrics(metrics_path(run_dir, "allocator")) if "core.effective_ratio" in r]
    summary = _json(run_dir / "summary.json") or {}
    before, after = summary.get("before") or {}, summary.get("after") or {}
    core = allocator[-1] if allocator else {}
    return RunOutcome(
        name=name,
        run_dir=run_dir,
        returncode=returncode,
        wall_seconds=wall_seconds,
        learner_steps=len(steps),
        heldout_greedy_before=before.get("greedy_success"),
        heldout_greedy_after=after.get("greedy_success"),
        heldout_sampled_before=before.get("sampled_success"),
        heldout_sampled_after=after.get("sampled_success"),
        effective_ratio=float(core.get("core.effective_ratio") or 0.0),
        # The learner's view: share of trained tokens whose advantage is non-zero.
        informative_token_share=fmean(float(r.get("train.nonzero_advantage_token_share") or 0) for r in steps)
        if steps
        else 0.0,
        mixed_root_groups_per_100_turns=float(core.get("core.mixed_groups_per_100_turns") or 0.0),
        mixed_branch_groups_per_100_turns=float(core.get("core.mixed_branch_groups_per_100_turns") or 0.0),
        predictor_auc=core.get("core.predictor_auc"),
        generated_turns=float(core.get("core.budget_turns_used") or 0.0),
        generated_tokens=float(core.get("core.budget_tokens_used") or 0.0),
        first_step_at=steps[0]["time"] - float(steps[0].get("step_seconds", 0)) if steps else None,
        last_step_at=steps[-1]["time"] if steps else None,
        mean_grad_norm=fmean(float(r["train.grad_norm"]) for r in steps if r.get("train.grad_norm") is not None)
        if any(r.get("train.grad_norm") is not None for r in steps)
        else None,
        weight_drift=run_weight_drift(run_dir),
    )


def run_weight_drift(run_dir: Path) -> float | None:
    """‖final − initial weights‖ of a finished run; None when either model is not there."""
    config = run_dir / "config" / "learner.yaml"
    final = run_dir / "final_model"
    try:
        initial = Path(yaml.safe_load(config.read_text())["model"]["model_dir"])
        return weight_distance(initial, final)
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None  # a run that failed before writing its config or its final model


def json_safe(value: Any) -> Any:
    """NaN (an undefined mean or standard error) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_results(
    name: str, payload: dict[str, Any], markdown: str, results_dir: Path | None = None
) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.md`` in ``results_dir`` (default bench/results); NaN is written
    as null, and values JSON does not know (types, paths) as their names or text."""
    out = results_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    md_path = out / f"{name}.md"
    text = json.dumps(json_safe(payload), indent=2, default=lambda v: v.__name__ if isinstance(v, type) else str(v))
    json_path.write_text(text)
    md_path.write_text(markdown)
    return json_path, md_path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
