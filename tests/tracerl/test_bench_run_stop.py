"""A benchmark run that is stopped (time limit, Ctrl-C, SIGTERM) lets its `tracerl up` stop the roles it
started: `up` gets SIGTERM and a grace period, and is killed only after it."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bench.runs import TIMED_OUT, run_until_stopped

# Stands in for `tracerl up`: on SIGTERM it "stops its roles" (writes a file), then exits.
POLITE_CHILD = textwrap.dedent(
    """
    import pathlib, signal, sys, time
    marker = pathlib.Path(sys.argv[1])
    def stop(signum, frame):
        marker.write_text(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    time.sleep(600)
    """
)
DEAF_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def _wait_for_line(path, text, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_run_past_its_time_limit_is_sent_sigterm_and_reported_timed_out(tmp_path):
    marker = tmp_path / "stopped"
    with (tmp_path / "up.log").open("w") as log:
        code = run_until_stopped([sys.executable, "-c", POLITE_CHILD, str(marker)], log, timeout_s=2.0)
    assert code == TIMED_OUT
    assert marker.read_text() == "SIGTERM"
    assert "not done within 2 s" in (tmp_path / "up.log").read_text()


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    started = time.monotonic()
    with (tmp_path / "up.log").open("w") as log:
        code = run_until_stopped([sys.executable, "-c", DEAF_CHILD], log, timeout_s=2.0, stop_grace_s=1.0)
    assert code == TIMED_OUT
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_benchmark_reaches_its_run_as_sigterm(tmp_path, interrupt):
    marker, log_path = tmp_path / "stopped", tmp_path / "up.log"
    bench = textwrap.dedent(
        f"""
        import signal, sys
        from bench.runs import run_until_stopped
        # As in a terminal: a shell's background job would start with Ctrl-C ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with open({str(log_path)!r}, "w") as log:
            run_until_stopped([sys.executable, "-c", {POLITE_CHILD!r}, {str(marker)!r}], log, timeout_s=600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", bench])
    try:
        _wait_for_line(log_path, "ready")
        parent.send_signal(interrupt)
        assert parent.wait(timeout=60) != 0  # the signal still ends the benchmark
    finally:
        if parent.poll() is None:
            parent.kill()
    assert marker.read_text() == "SIGTERM"
