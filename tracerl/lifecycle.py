"""How a role process stops: SIGINT and SIGTERM set its stop event, and a stop that hangs says where.

A role that has been asked to stop and is still running ``diagnose_after_s`` later is
stuck somewhere a log line cannot show (an await that never returns, a worker thread
that ``asyncio.run`` waits for at exit, a child process join). At that moment every
pending asyncio task's stack goes to the log as ``stop_overran`` and every thread's
stack to stderr, which the supervisor and the tests capture. The process keeps
running: the diagnosis must not turn a slow but correct stop into a failure.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import signal
import sys

from tracerl.logs import get_logger

log = get_logger(__name__)

#: Longer than any planned stop step (an actor's in-flight grace, a bus drain, a learner step).
STOP_DIAGNOSIS_AFTER_S = 90.0


def pending_task_stacks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """One text block per unfinished task on ``loop``: its name and where it is suspended."""
    blocks = []
    for task in asyncio.all_tasks(loop):
        if task.done():
            continue
        out = io.StringIO()
        task.print_stack(file=out)
        blocks.append(f"{task.get_name()}: {out.getvalue()}")
    return blocks


def stop_on_signals(stop: asyncio.Event, diagnose_after_s: float = STOP_DIAGNOSIS_AFTER_S) -> None:
    """Make SIGINT/SIGTERM set ``stop`` on the running loop, arming the hang diagnosis."""
    loop = asyncio.get_running_loop()

    def diagnose() -> None:
        log.warning("stop_overran", seconds=diagnose_after_s, pending_tasks=pending_task_stacks(loop))

    def on_signal() -> None:
        if stop.is_set():
            return
        stop.set()
        loop.call_later(diagnose_after_s, diagnose)
        # Also covers a hang after the loop has closed, e.g. joining the default executor.
        faulthandler.dump_traceback_later(diagnose_after_s, repeat=False, file=sys.stderr)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
