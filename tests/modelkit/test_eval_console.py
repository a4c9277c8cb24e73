"""A command's console shows the project's progress; the engine's logs and output go to a file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import actors.engine as engine_module

REPO = Path(__file__).resolve().parents[2]
#: A line of vLLM's own log format: "(EngineCore pid=12) INFO 12-03 14:42:52 [core.py:133] ...".
VLLM_LOG_LINE = re.compile(r"^\(\w+ pid=\d+\) (INFO|WARNING|DEBUG)\b", re.MULTILINE)


def test_processes_started_while_the_engine_starts_print_into_the_engine_log(tmp_path, monkeypatch, capfd):
    log_file = tmp_path / "engine.log"
    monkeypatch.setattr(engine_module, "_engine_log", log_file)
    child = [sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"]
    with engine_module._engine_processes_output():
        started = subprocess.Popen(child)
    started.wait(30)
    print("after the block")
    console = capfd.readouterr()
    assert sorted(log_file.read_text().splitlines()) == ["child err", "child out"]
    assert "child" not in console.out + console.err and console.out == "after the block\n"


def test_without_a_routed_log_the_block_leaves_the_streams_alone(monkeypatch, capfd):
    monkeypatch.setattr(engine_module, "_engine_log", None)
    with engine_module._engine_processes_output():
        subprocess.run([sys.executable, "-c", "print('child out')"], check=True)
    assert capfd.readouterr().out == "child out\n"


@pytest.mark.vllm
@pytest.mark.slow
def test_eval_console_has_results_but_no_engine_logs_and_no_traceback(random_model_dir, tmp_path):
    engine_log = tmp_path / "engine.log"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracerl",
            "eval",
            "--model",
            str(random_model_dir),
            "--env",
            "multihop",
            "--tasks",
            "2",
            "--log-file",
            str(engine_log),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert "multihop (heldout, 2 tasks)" in result.stdout and "success" in result.stdout
    assert "Traceback" not in console and "Exception ignored" not in console, console[-3000:]
    assert not VLLM_LOG_LINE.search(console), VLLM_LOG_LINE.findall(console)
    assert " INFO " not in console
    # Routed, not dropped: the engine's INFO records from this process and the engine core are in the file.
    logged = engine_log.read_text()
    assert re.search(r"MainProcess pid=\d+ INFO vllm\.", logged)
    assert re.search(r"EngineCore\S* pid=\d+ INFO vllm\.", logged)
