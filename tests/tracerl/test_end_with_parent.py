"""Processes started with multiprocessing inside ``multiprocessing_children_end_with_this_process`` end
when their parent ends; nothing else is touched."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from tracerl.end_with_parent import (
    HOOK_DIR,
    OWNER_PID_ENV,
    multiprocessing_children_end_with_this_process,
    python_path_with_hook,
    stat_says_exited,
)

REPO = Path(__file__).resolve().parents[2]
WATCH_REPORT = (
    "import os, threading; print(os.environ.get('TRACERL_OWNER_PID') == str(os.getpid()),"
    " any(t.name == 'end-with-parent' for t in threading.enumerate()))"
)


def test_the_state_is_read_after_the_last_parenthesis_of_the_name():
    assert stat_says_exited("4242 (python) Z 1 4242 4242 0 -1")
    assert stat_says_exited("4242 (a (b) Z) X 1")
    assert not stat_says_exited("4242 (VLLM::Worker Z) S 1 4242")
    assert not stat_says_exited("4242 (python) R 1")


def test_the_hook_directory_comes_first_once():
    assert python_path_with_hook(None) == str(HOOK_DIR)
    assert python_path_with_hook("") == str(HOOK_DIR)
    assert python_path_with_hook(os.pathsep.join(["/a", str(HOOK_DIR), "", "/b"])) == os.pathsep.join(
        [str(HOOK_DIR), "/a", "/b"]
    )


def test_the_block_restores_the_environment(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.delenv(OWNER_PID_ENV, raising=False)
    with multiprocessing_children_end_with_this_process():
        assert os.environ["PYTHONPATH"] == os.pathsep.join([str(HOOK_DIR), "/somewhere"])
        assert os.environ[OWNER_PID_ENV] == str(os.getpid())
    assert os.environ["PYTHONPATH"] == "/somewhere"
    assert OWNER_PID_ENV not in os.environ


def report_watch(report) -> None:
    """Runs in a spawned child."""
    report.send(
        (
            os.environ.get(OWNER_PID_ENV) == str(os.getpid()),
            any(thread.name == "end-with-parent" for thread in threading.enumerate()),
        )
    )


def test_a_spawned_child_watches_its_parent_and_a_plain_interpreter_does_not(monkeypatch, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import os, pathlib\npathlib.Path(os.environ['MARKER']).write_text('ran')\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    spawn = multiprocessing.get_context("spawn")
    reader, writer = spawn.Pipe(duplex=False)
    with multiprocessing_children_end_with_this_process():
        child = spawn.Process(target=report_watch, args=(writer,))
        child.start()
        plain = subprocess.run(
            [sys.executable, "-c", WATCH_REPORT], capture_output=True, text=True, timeout=60, check=False
        )
    assert reader.recv() == (True, True)
    child.join(30)
    assert child.exitcode == 0
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == ["False", "False"]
    # The sitecustomize the hook shadows still ran, in both.
    assert (tmp_path / "marker").read_text() == "ran"


def test_a_sigkilled_owner_takes_its_children_and_grandchildren_but_nothing_else():
    owner = subprocess.Popen(
        [sys.executable, "-m", "tests.tracerl.descendants_owner"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        report = json.loads(owner.stdout.readline())
        tied = [psutil.Process(pid) for pid in report["tied"]]
        untied = [psutil.Process(pid) for pid in report["untied"]]
        started = tied + untied
        shared_memory = Path("/dev/shm") / report["shared_memory"]
        assert len(tied) == 4 and all(proc.is_running() for proc in started) and shared_memory.exists()

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        _, alive = psutil.wait_procs(tied, timeout=5)
        assert not alive, f"still alive after their owner's SIGKILL: {alive}"
        assert all(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE for proc in untied)
        # multiprocessing's resource tracker is not tied: once the last process using it is gone
        # (here the untied spawned child), it removes the shared memory the killed child left.
        for proc in untied:
            proc.kill()
        psutil.wait_procs(untied, timeout=5)
        deadline = time.monotonic() + 10
        while shared_memory.exists():
            assert time.monotonic() < deadline, f"{shared_memory} left behind"
            time.sleep(0.1)
    finally:
        # Not the whole group: that would take the resource tracker before it cleans up.
        if owner.poll() is None:
            owner.kill()
        owner.wait(10)
        for proc in started:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(started, timeout=5)
