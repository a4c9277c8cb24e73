"""An actor's vLLM engine processes end with the actor, however the actor ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.actors.test_actor_processes import kill_group, start_actor

pytestmark = [pytest.mark.nats, pytest.mark.vllm]

ENGINE_START_TIMEOUT_S = 600.0
ENGINE_EXIT_TIMEOUT_S = 10.0


def wait_engine_started(actor: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "engine_started" not in log_path.read_text(errors="replace"):
        assert actor.poll() is None, f"actor exited before its engine started; see {log_path}"
        assert time.monotonic() < deadline, f"engine not started after {timeout:.0f}s; see {log_path}"
        time.sleep(0.5)


def describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for proc in processes:
        try:
            described.append(f"pid={proc.pid} {' '.join(proc.cmdline()).strip()[:120]}")
        except psutil.Error:
            described.append(f"pid={proc.pid}")
    return described


def shared_memory_files(processes: list[psutil.Process]) -> set[Path]:
    """The files under /dev/shm that ``processes`` have mapped and that still exist."""
    files = set()
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            files |= {Path(region.path) for region in proc.memory_maps() if region.path.startswith("/dev/shm/")}
    return {path for path in files if path.exists()}


def test_an_actor_killed_with_sigkill_takes_its_engine_processes_with_it(random_model_dir, bus_run, tmp_path):
    actor = start_actor(bus_run, random_model_dir, "doomed", tmp_path)
    descendants: list[psutil.Process] = []
    try:
        wait_engine_started(actor, tmp_path / "doomed.log", ENGINE_START_TIMEOUT_S)
        # Collected before the kill: afterwards the orphans belong to this process (a subreaper).
        descendants = psutil.Process(actor.pid).children(recursive=True)
        titles = " ".join(" ".join(proc.cmdline()) for proc in descendants)
        assert "VLLM::EngineCore" in titles and "VLLM::Worker" in titles, describe(descendants)
        shared = shared_memory_files(descendants)

        os.kill(actor.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        actor.wait(10)
        _, alive = psutil.wait_procs(descendants, timeout=ENGINE_EXIT_TIMEOUT_S)
        assert not alive, f"alive {ENGINE_EXIT_TIMEOUT_S:.0f}s after the actor's SIGKILL: {describe(alive)}"
        print(f"{len(descendants)} descendants gone {time.monotonic() - killed_at:.1f}s after the actor's SIGKILL")
        # The descendants include multiprocessing's resource trackers, which remove the shared
        # memory the killed engine processes leave before they exit themselves.
        left = {path for path in shared if path.exists()}
        assert not left, f"shared memory of the engine left behind: {sorted(left)}"
    finally:
        kill_group(actor)
        for proc in descendants:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(descendants, timeout=5)
