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
