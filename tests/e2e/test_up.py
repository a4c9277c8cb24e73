"""End to end: `tracerl up` runs the bus, the learner, the allocator and an actor as real
processes on a short config, and the run's artefacts show every role did its part."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.config import LearnerConfig
from tracerl.metrics import metrics_path, read_metrics

pytestmark = [pytest.mark.nats, pytest.mark.vllm, pytest.mark.slow]

# Allocator step i opens once the learner is at version >= i - eta, and its items demand
# min_policy_version = version - eta, so an actor must have reloaded to >= i - 2*eta before
# sampling them. With eta = 2 that makes the sixth step (i = 5) need version >= 1 by
# contract, however slowly the actor reloads; earlier steps may legally come from version 0.
ALLOCATOR_ETA = 2
LEARNER_STEPS = 6


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, embedded_model_dir):
    run_dir = tmp_path_factory.mktemp("up") / "run"
    overrides = {
        "run.run_id": "e2e",
        "run.run_dir": str(run_dir),
        "model_dir": str(embedded_model_dir),
        "num_actors": 1,
        "eval_tasks": 4,
        "timeout_s": 600,
        "progress_interval_s": 10,
        "learner.training.max_steps": LEARNER_STEPS,
        "allocator.core.strategy": "trace",
        "allocator.core.batch_prompts": 2,
        "allocator.core.group_size": 2,
        "allocator.core.step_budget_turns": 24,
        "allocator.core.staleness_eta": ALLOCATOR_ETA,
        "allocator.heldout.tasks": 2,
        "allocator.heldout.every_versions": 2,
    }
    argv = [sys.executable, "-m", "tracerl", "up"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    return run_dir, result


def test_up_exits_cleanly_and_reports(finished_run):
    run_dir, result = finished_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[up] report:" in result.stdout
    assert (run_dir / "report.png").stat().st_size > 10_000
    summary = json.loads((run_dir / "summary.json").read_text())
    for phase in ("before", "after"):
        assert 0.0 <= summary[phase]["greedy_success"] <= 1.0
        assert 0.0 <= summary[phase]["sampled_success"] <= 1.0
    for role in ("bus", "learner", "allocator", "actor-0", "up"):
        assert (run_dir / "config" / f"{role}.yaml").is_file()


def test_learner_trained_on_trees_from_updated_actors(finished_run):
    run_dir, _ = finished_run
    steps = [r for r in read_metrics(metrics_path(run_dir, "learner")) if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, LEARNER_STEPS + 1))
    assert steps[-1]["policy_version"] == LEARNER_STEPS
    assert all(r["batch.turns"] > 0 and r["train.trained_tokens"] > 0 for r in steps)
    # Actors reloaded weights in place: the last step's turns were all sampled by a newer version.
    assert steps[-1]["batch_versions_min"] >= LEARNER_STEPS - 1 - 2 * ALLOCATOR_ETA
    actor_final = [r for r in read_metrics(metrics_path(run_dir, "actor-actor-0")) if r.get("final")]
    assert actor_final and actor_final[-1]["weights_loaded"] >= 1
    # The learner trains at version policy_version - 1; anything older than its bound is dropped.
    eta = LearnerConfig().training.staleness_eta
    for r in steps:
        lag = r["policy_version"] - 1 - r["batch_versions_min"]
        assert lag <= eta or r["train.stale_tokens"] > 0
    assert (run_dir / "final_model" / "config.json").is_file()
    assert any(Path(run_dir, "checkpoints").glob("v*"))


def test_allocator_emitted_trees_and_probed_heldout(finished_run):
    run_dir, _ = finished_run
    records = list(read_metrics(metrics_path(run_dir, "allocator")))
    assert max(r.get("trees_emitted", 0) for r in records) >= LEARNER_STEPS
    heldout = [r for r in records if "heldout.policy_version" in r]
    assert heldout and heldout[0]["heldout.policy_version"] == 0
    assert max(r.get("core.budget_overspent_turns", 0) for r in records) == 0
