from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch

from learner.trainer import Trainer
from tests.learner.helpers import batches, learner_config
from tests.learner.two_process_worker import LAYOUTS

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layout", ["packed", "lean", "fsdp", "fsdp-ppo2"])
def test_two_gloo_processes_give_the_one_process_update(tiny_model_dir, tmp_path, layout):
    """Each layout on two ranks against the default (dense, one tree per forward, unsharded) on one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(REPO / "tests/learner/two_process_worker.py"), str(tiny_model_dir), str(tmp_path), layout,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]  # really two processes
    assert {r["parameter_type"] for r in reports} == {"DTensor" if layout.startswith("fsdp") else "Parameter"}
    assert reports[0]["trees"] == reports[1]["trees"] == [5, 1]  # both saw rank 0's batches

    updates = LAYOUTS[layout].get("updates_per_batch", 1)
    single = Trainer(learner_config(tiny_model_dir, packing=True, updates_per_batch=updates))
    for step, size in enumerate((5, 1)):
        metrics = single.train_step(batches(seed=9 + size, steps=1, trees_per_step=size)[0])
        assert abs(metrics["loss"] - reports[0]["losses"][step]) < 1e-5
    assert single.policy_version == 2

    two = safetensors.torch.load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    one = single.accelerator.unwrap_model(single.model).state_dict()
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    # The same arithmetic on both sides for "packed"; "lean" sums attention in another order,
    # and Adam's first steps (size ~lr = 1e-3 whatever the gradient's scale) carry the last
    # digits of small gradients into the weights: still under 1% of one step.
    # FSDP reduce-scatters gradients where DDP all-reduces them: the same sums in another order.
    assert worst < (1e-6 if layout == "packed" else 1e-5), worst
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]

    # The two ranks' checkpoint (weights and optimiser state) resumed by one process, and by the
    # two ranks themselves: the same third step.
    resumed = Trainer(learner_config(tiny_model_dir, packing=True, updates_per_batch=updates))
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.policy_version == 2
    metrics = resumed.train_step(batches(seed=3, steps=1, trees_per_step=3)[0])
    assert abs(metrics["loss"] - reports[0]["losses"][2]) < 1e-5
    two = safetensors.torch.load_file(str(tmp_path / "resumed" / "model.safetensors"))
    one = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    worst = max((two[k] - one[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst
