"""A role's stop: signals set the stop event, and a stop that hangs reports where it hangs."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A role whose stop never finishes: a task waits forever after SIGTERM has set the event.
HANGING_ROLE = textwrap.dedent(
    """
    import asyncio, os, signal
    from tracerl.lifecycle import stop_on_signals
    from tracerl.logs import configure_logging

    async def main():
        configure_logging("hang-test")
        stop = asyncio.Event()
        stop_on_signals(stop, diagnose_after_s=0.3)
        stuck = asyncio.create_task(asyncio.Event().wait(), name="stuck_forever")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        print("stop_set", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal must not re-arm or fail
        await asyncio.sleep(1.0)
        stuck.cancel()
        print("exited_cleanly", flush=True)

    asyncio.run(main())
    """
)


def test_a_stop_that_hangs_logs_the_pending_tasks_and_thread_stacks_and_keeps_running():
    result = subprocess.run([sys.executable, "-c", HANGING_ROLE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stop_set", "exited_cleanly"]
    # The structured line names the stuck task and where it waits ...
    overran = [line for line in result.stderr.splitlines() if "stop_overran" in line]
    assert len(overran) == 1, result.stderr
    assert "stuck_forever" in overran[0]
    # ... and faulthandler's timed dump shows the threads' stacks.
    assert result.stderr.count("most recent call first") >= 1
    assert "Timeout (0:00:00" in result.stderr


def test_a_stop_that_finishes_in_time_prints_no_diagnosis():
    quick = HANGING_ROLE.replace("diagnose_after_s=0.3", "diagnose_after_s=30.0")
    result = subprocess.run([sys.executable, "-c", quick], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "stop_overran" not in result.stderr
    assert "most recent call first" not in result.stderr
