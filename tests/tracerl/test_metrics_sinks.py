"""Metrics beyond JSONL: the scalars of every record, TensorBoard event files and W&B."""

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest
import structlog
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from allocator.config import AllocatorConfig
from tracerl.config import ConfigError, LogConfig, RunConfig, load_config
from tracerl.metrics import (
    MetricsWriter,
    metrics_path,
    read_metrics,
    role_metrics,
    scalar_fields,
    scalar_step,
    tensorboard_dir,
)


def test_scalar_fields_are_the_numeric_fields_but_flags_and_time():
    record = {
        "time": 5.0,
        "role": "learner",
        "train.loss": np.float32(0.5),
        "step": 3,
        "final": True,
        "tree_ids": ["a"],
        "train.grad_norm": float("nan"),
        "skip_reason": None,
    }
    scalars = scalar_fields(record)
    assert set(scalars) == {"train.loss", "step", "train.grad_norm"}
    assert scalars["train.loss"] == 0.5 and scalars["step"] == 3.0 and math.isnan(scalars["train.grad_norm"])


@pytest.mark.parametrize(
    ("record", "step_key", "previous", "step"),
    [
        ({"step": 7, "x": 1}, "step", 6, 7),
        ({"step": np.int64(9)}, "step", 8, 9),
        ({"final": True}, "step", 7, 7),  # a record without a step stays at the last one
        ({"step": None}, "step", 4, 4),
        ({"step": True}, "step", 4, 4),
        ({"x": 1}, None, 0, 1),  # no step key: the step counts records
        ({"step": 100}, None, 2, 3),
    ],
)
def test_scalar_step(record, step_key, previous, step):
    assert scalar_step(record, step_key, previous) == step


def _scalars(run_dir, role):
    events = EventAccumulator(str(tensorboard_dir(run_dir, role)))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_role_metrics_show_learner_loss_and_allocator_effective_ratio_in_tensorboard(tmp_path):
    run, logging = RunConfig(run_dir=str(tmp_path)), LogConfig()
    learner = role_metrics(run, logging, "learner", step_key="step")
    for step, loss in [(1, 0.75), (2, 0.5), (3, 0.25)]:
        learner.write(
            {"step": step, "train.loss": loss, "batch.effective_ratio": 0.5, "policy_version": step}, now=100.0 + step
        )
    learner.write({"final": True, "trees_trained": 12}, now=110.0)
    learner.close()
    allocator = role_metrics(run, logging, "allocator", step_key="step")
    allocator.write({"step": 2, "core.effective_ratio": 0.25, "core.groups": 4}, now=101.0)
    allocator.write({"step": 4, "core.effective_ratio": 0.5, "core.groups": 8}, now=102.0)
    allocator.close()

    learner_scalars = _scalars(tmp_path, "learner")
    assert learner_scalars["train.loss"] == [(1, 0.75), (2, 0.5), (3, 0.25)]
    assert learner_scalars["trees_trained"] == [(3, 12.0)]  # the final record sits at the last step
    assert "final" not in learner_scalars and "time" not in learner_scalars
    assert _scalars(tmp_path, "allocator")["core.effective_ratio"] == [(2, 0.25), (4, 0.5)]
    # The JSONL file has every record, as before.
    assert [r.get("step") for r in read_metrics(metrics_path(tmp_path, "learner"))] == [1, 2, 3, None]


def test_a_restarted_role_goes_on_along_its_axis(tmp_path):
    run, logging = RunConfig(run_dir=str(tmp_path)), LogConfig()
    for values in ([1.0, 2.0], [3.0]):
        actor = role_metrics(run, logging, "actor-0")  # no step key: the step counts records
        for value in values:
            actor.write({"turns_per_s": value})
        actor.close()
    # Two writers' event files may be read in either order when both start within one second:
    # what matters is that the restarted one goes on at step 3 rather than at 1.
    assert sorted(_scalars(tmp_path, "actor-0")["turns_per_s"]) == [(1, 1.0), (2, 2.0), (3, 3.0)]


class _BrokenSink:
    name = "broken"

    def __init__(self):
        self.calls = 0
        self.closed = False

    def add(self, scalars, step, wall_time):
        self.calls += 1
        raise OSError("disk full")

    def close(self):
        self.closed = True


def test_a_failing_sink_is_reported_once_and_metrics_go_on_in_jsonl(tmp_path):
    sink = _BrokenSink()
    writer = MetricsWriter(tmp_path, "learner", step_key="step", sinks=[sink])
    with structlog.testing.capture_logs() as logs:
        for step in (1, 2, 3):
            writer.write({"step": step, "train.loss": 0.1})
        writer.close()
    assert sink.calls == 1 and sink.closed
    assert [r["step"] for r in read_metrics(metrics_path(tmp_path, "learner"))] == [1, 2, 3]
    [failure] = [e for e in logs if e["event"] == "metrics_sink_failed"]
    assert failure["sink"] == "broken" and "disk full" in failure["error"]


def test_a_sink_that_cannot_start_leaves_the_role_its_jsonl(tmp_path):
    (tmp_path / "tb").write_text("a file where the event directories would go")
    with structlog.testing.capture_logs() as logs:
        writer = role_metrics(RunConfig(run_dir=str(tmp_path)), LogConfig(), "allocator", step_key="step")
    writer.write({"step": 1, "core.effective_ratio": 0.5})
    writer.close()
    assert writer.sinks == []
    assert [r["core.effective_ratio"] for r in read_metrics(metrics_path(tmp_path, "allocator"))] == [0.5]
    assert [(e["event"], e["sink"]) for e in logs] == [("metrics_sink_failed", "tensorboard")]


class _FakeWandbRun:
    def __init__(self, **settings):
        self.settings = settings
        self.metrics: list[tuple[str, str | None]] = []
        self.rows: list[dict] = []
        self.finished = False

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, row):
        self.rows.append(row)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**settings):
        module.runs.append(_FakeWandbRun(**settings))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return module


def test_wandb_gets_every_record_when_asked(tmp_path, fake_wandb):
    config = load_config(AllocatorConfig, None, [f"run.run_dir={tmp_path}", "run.run_id=exp1", "log.wandb=true"])
    writer = role_metrics(config.run, config.log, "allocator", step_key="step")
    writer.write({"step": 2, "core.effective_ratio": 0.25, "final": True})
    writer.close()
    [run] = fake_wandb.runs
    assert run.settings["group"] == "exp1" and run.settings["job_type"] == "allocator"
    assert run.settings["mode"] == "offline" and run.settings["dir"] == str(tmp_path)
    assert ("*", "step") in run.metrics
    assert run.rows == [{"step": 2, "core.effective_ratio": 0.25}]
    assert run.finished
    # TensorBoard is written all the same.
    assert _scalars(tmp_path, "allocator")["core.effective_ratio"] == [(2, 0.25)]


def test_no_wandb_unless_asked(tmp_path, fake_wandb):
    writer = role_metrics(RunConfig(run_dir=str(tmp_path)), LogConfig(), "learner", step_key="step")
    writer.write({"step": 1, "train.loss": 0.5})
    writer.close()
    assert fake_wandb.runs == [] and [s.name for s in writer.sinks] == []


def test_asking_for_wandb_without_it_installed_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of wandb fails, as when not installed
    with pytest.raises(ConfigError, match=r"field log: wandb=true needs the wandb package, which is not installed"):
        load_config(AllocatorConfig, None, ["log.wandb=true"])
