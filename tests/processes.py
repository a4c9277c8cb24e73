"""Real role processes for restart tests: config files, start-up and SIGKILL by process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tracerl.config import dump_config


def written(config: Any, role: str, directory: Path) -> tuple[Path, Path]:
    """The config file a ``tracerl ROLE`` process reads, and where its output goes."""
    config_path = directory / f"{role}.yaml"
    config_path.write_text(dump_config(config))
    return config_path, directory / f"{role}.out"


def start_role(role: str, config_path: Path, log_path: Path) -> subprocess.Popen:
    """``tracerl ROLE`` in its own session, so that its process group can be killed whole."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tracerl", role, "--config", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_groups(*processes: subprocess.Popen | None) -> None:
    """SIGKILL each still-running process's group (its children go with it)."""
    for proc in processes:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def small_allocator_config(
    bus_run: Any, run_dir: Path, *, batch_prompts: int, step_budget_turns: int, **overrides: Any
):
    """A real allocator process's config for the restart and shard tests: TRACE on 48 multi-hop
    tasks in short steps (groups of 2, 3 turns), with the run's allocator credential."""
    from allocator.config import AllocatorConfig, TaskPoolConfig
    from allocator.core import AllocatorCoreConfig
    from allocator.heldout import HeldoutConfig
    from protocol import replace
    from tracerl.config import LogConfig, RunConfig

    credentials = Path(bus_run.run.run_dir) / "credentials" / "allocator.json"
    return AllocatorConfig(
        run=RunConfig(run_id=bus_run.run.run_id, run_dir=str(run_dir)),
        bus=replace(bus_run.bus, credentials=str(credentials), max_reconnect_attempts=10),
        log=LogConfig(level="info"),
        core=AllocatorCoreConfig(
            strategy="trace",
            batch_prompts=batch_prompts,
            group_size=2,
            step_budget_turns=step_budget_turns,
            max_turns=3,
            staleness_eta=1,
            max_open_steps=2,
        ),
        tasks=TaskPoolConfig(env="multihop", train_tasks=48),
        heldout=HeldoutConfig(every_versions=0),
        registry_interval_s=0.3,
        metrics_interval_s=1.0,
        **overrides,
    )
