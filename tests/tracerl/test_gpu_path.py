"""The multi-GPU path as far as a machine without GPUs can check it: its configs load, and
scripts/gpu-check.sh parses and stops with "no CUDA" here."""

import shutil
import subprocess
from pathlib import Path

from actors.config import ActorConfig
from learner.config import LearnerConfig
from tracerl.config import load_config
from tracerl.upconfig import UpConfig

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
BASH = shutil.which("bash") or "/bin/bash"


def test_gpu_configs_load_with_tensor_parallel_actors_and_a_sharded_flex_learner():
    up = load_config(UpConfig, REPO / "configs/gpu/up-qwen3.yaml")
    assert up.learner.model.attention == "flex" and up.learner.model.dtype == "bfloat16"
    assert up.actor.engine.dtype == "bfloat16" and up.model_dir
    learner = load_config(LearnerConfig, REPO / "configs/gpu/learner-fsdp.yaml")
    assert learner.parallel.strategy == "fsdp" and learner.model.attention == "flex"
    actor = load_config(ActorConfig, REPO / "configs/gpu/actor-tp.yaml")
    assert actor.engine.tensor_parallel_size == 4


def test_gpu_check_parses():
    done = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def _no_cuda_run(tmp_path: Path, fake_nvidia_smi: bool) -> subprocess.CompletedProcess:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    if fake_nvidia_smi:  # a driver tool that finds no device
        fake = tools / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
        fake.chmod(0o755)
    # PATH holds only these tools: a script going past the CUDA check would fail on its next command.
    env = {"PATH": str(tools), "HOME": str(tmp_path)}
    return subprocess.run(
        [BASH, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def test_gpu_check_stops_with_no_cuda_without_a_driver(tmp_path):
    done = _no_cuda_run(tmp_path, fake_nvidia_smi=False)
    assert done.returncode == 3, done.stderr
    assert "no CUDA" in done.stderr and "==" not in done.stderr  # stopped before the first step


def test_gpu_check_stops_with_no_cuda_when_the_driver_finds_no_gpu(tmp_path):
    done = _no_cuda_run(tmp_path, fake_nvidia_smi=True)
    assert done.returncode == 3, done.stderr
    assert "no CUDA" in done.stderr and "==" not in done.stderr


def test_the_bfcl_run_config_covers_every_training_conversation_and_its_turn_cap():
    import importlib.util

    import pytest

    from environments import make_tasks

    up = load_config(UpConfig, REPO / "configs/gpu/up-qwen3-bfcl.yaml")
    assert up.allocator.tasks.env == "bfcl" and up.model_dir and up.learner.model.attention == "flex"
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip("bfcl-eval is not installed: run make data-bfcl")
    # A pool larger than the split would fail at the allocator's start.
    pool = make_tasks("bfcl", "train", up.allocator.tasks.train_tasks, up.allocator.tasks.seed)
    assert len(pool) == up.allocator.tasks.train_tasks
    heldout = make_tasks("bfcl", "heldout", up.eval_tasks, up.allocator.tasks.seed)
    longest = max(task.params["max_turns"] for task in [*pool, *heldout])
    assert up.allocator.core.max_turns >= longest and up.allocator.heldout.max_turns >= longest
