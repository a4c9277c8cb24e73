"""A role's stop always ends: within its bound, non-zero and naming what hung when it had to."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tracerl.lifecycle import EXIT_STOP_OVERRAN

REPO = Path(__file__).resolve().parents[2]

# A role process: run_role + stop_on_signals with a 1 s bound, and a task that swallows its
# cancellation. MODE picks what the role's main coroutine does after SIGTERM.
ROLE = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from tracerl.lifecycle import end_tasks, run_role, stop_on_signals
    from tracerl.logs import configure_logging

    MODE, BOUND_S = sys.argv[1], float(sys.argv[2])

    async def swallow_forever():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # what a library racing a cancel can do

    async def main():
        configure_logging("stop-test")
        stop = asyncio.Event()
        stop_on_signals(stop, bound_s=BOUND_S, backstop_after_s=1.0)
        if MODE == "set_then_block":
            stop.set()  # the role stops itself (an actor whose engine died) ...
            time.sleep(3600)  # ... and the loop is held before any task sees the event
        stuck = asyncio.create_task(swallow_forever(), name="swallows_cancel")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal must change nothing
        print("stop_set", flush=True)
        if MODE == "quick":
            stuck.cancel()  # the stop ends its tasks and returns: the task is left to run_role
            return 0
        if MODE == "end_tasks":
            names = await end_tasks([stuck], within_s=0.3)
            print("left_behind", *names, flush=True)
            return 0
        if MODE == "await_forever":
            await stuck  # a role that waits for its task like asyncio.gather would
        if MODE == "blocked_loop":
            time.sleep(3600)  # the loop itself cannot run the watchdog

    sys.exit(run_role(main(), leftover_grace_s=0.5))
    """
)


def run_role_process(mode: str, bound_s: float = 1.0) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", ROLE, mode, str(bound_s)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def test_a_task_left_behind_by_the_role_is_bounded_by_run_role_and_the_exit_is_non_zero():
    result, _ = run_role_process("quick", bound_s=30.0)
    # The swallowed cancel leaves the task running after main returned: run_role gives it a
    # bounded grace, names it and exits non-zero instead of waiting forever like asyncio.run.
    assert result.returncode == EXIT_STOP_OVERRAN, result.stderr
    assert result.stdout.split() == ["stop_set"]
    assert "tasks_did_not_end" in result.stderr and "swallows_cancel" in result.stderr
    assert "stop_overran" not in result.stderr


def test_end_tasks_names_the_task_that_did_not_end():
    result, _ = run_role_process("end_tasks", bound_s=30.0)
    assert result.stdout.split() == ["stop_set", "left_behind", "swallows_cancel"]
    assert result.returncode == EXIT_STOP_OVERRAN, result.stderr


def test_a_stop_that_waits_forever_is_ended_at_the_bound_with_the_pending_tasks_named():
    result, seconds = run_role_process("await_forever")
    assert result.returncode == EXIT_STOP_OVERRAN, result.stderr
    overran = [line for line in result.stderr.splitlines() if "stop_overran" in line]
    assert len(overran) == 1, result.stderr
    assert "swallows_cancel" in overran[0]
    assert "most recent call first" in result.stderr  # every thread's stack
    assert seconds < 30


def test_a_blocked_event_loop_is_ended_by_the_backstop():
    result, seconds = run_role_process("blocked_loop")
    assert result.returncode != 0
    assert "Timeout (0:00:02" in result.stderr  # faulthandler's dump at bound + backstop
    assert seconds < 30


def test_a_role_that_stops_itself_on_a_loop_that_never_runs_again_is_ended_by_the_backstop():
    result, seconds = run_role_process("set_then_block")
    assert result.returncode != 0
    assert "Timeout (0:00:02" in result.stderr, result.stderr
    assert seconds < 30


def test_a_stop_that_ends_in_time_exits_zero_without_a_diagnosis():
    quick = ROLE.replace("stuck.cancel()  # the stop", "stuck = None  # the stop")
    quick = quick.replace(
        'stuck = asyncio.create_task(swallow_forever(), name="swallows_cancel")',
        'stuck = asyncio.create_task(asyncio.sleep(0), name="ends")',
    )
    result = subprocess.run(
        [sys.executable, "-c", quick, "quick", "1.0"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stop_set"]
    for sign in ("stop_overran", "tasks_did_not_end", "most recent call first"):
        assert sign not in result.stderr
