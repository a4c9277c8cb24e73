"""How a role process stops: it always ends, within a bound, whatever its libraries do.

Three layers, because each one alone has been seen to fail:

1. Background loops wait on the stop event (``sleep_or_stop``), never on a bare sleep, so
   they end when the event is set even if a library swallowed their cancellation (on
   Python 3.11 ``asyncio.wait_for`` can drop a cancel that races its inner future, and an
   actor's heartbeat loop was seen to beat on after its cancel).
2. A role ends its tasks through ``end_tasks``: cancel, wait a bounded time, and name
   the tasks that did not end instead of waiting for them forever.
3. ``run_role`` replaces ``asyncio.run`` at each role's process entry: its clean-up waits a
   bounded time for leftover tasks (``asyncio.run`` waits forever), and once the stop
   event is set (by a signal or by the role itself) a watchdog ends the process
   ``bound_s`` later: it logs ``stop_overran`` with every pending task's stack, dumps every
   thread's stack to stderr and exits with ``EXIT_STOP_OVERRAN``. A C-level backstop
   (faulthandler) does the same if the event loop itself is blocked or already closed,
   e.g. while the interpreter joins a stuck thread at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterable
from typing import Any

from tracerl.logs import get_logger

log = get_logger(__name__)

#: Longer than any planned stop step (an actor's in-flight grace, a bus drain, a learner step
#: on the embedded model). Roles take theirs from ``run.stop_timeout_s``.
STOP_BOUND_S = 90.0
#: Exit status of a role whose stop did not end within its bound.
EXIT_STOP_OVERRAN = 3
#: How long a role waits for its own loops after the stop event: they watch the event, so
#: they end at once unless something is wrong.
LOOPS_END_S = 5.0
#: After the bound, how long the C-level backstop waits for the loop-level watchdog.
BACKSTOP_AFTER_S = 10.0
#: The armed stop watchdogs, held until they finish.
_WATCHDOGS: set[asyncio.Task[None]] = set()


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking as soon as ``stop`` is set; True when it is set."""
    if not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    return stop.is_set()


def pending_task_stacks(loop: asyncio.AbstractEventLoop, tasks: Iterable[asyncio.Task[Any]] | None = None) -> list[str]:
    """One text block per unfinished task (all of ``loop``'s by default): its name and where it waits."""
    blocks = []
    for task in asyncio.all_tasks(loop) if tasks is None else tasks:
        if task.done():
            continue
        out = io.StringIO()
        task.print_stack(file=out)
        blocks.append(f"{task.get_name()}: {out.getvalue()}")
    return blocks


async def end_tasks(tasks: Iterable[asyncio.Task[Any]], within_s: float = LOOPS_END_S) -> list[str]:
    """Cancel ``tasks`` and wait at most ``within_s`` for them; returns the names of those still running.

    A task that swallows its cancellation is reported (``tasks_did_not_end``, with its
    stack) and left behind instead of hanging the caller.
    """
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=within_s)
    if pending:
        log.error(
            "tasks_did_not_end",
            seconds=within_s,
            tasks=sorted(t.get_name() for t in pending),
            stacks=pending_task_stacks(asyncio.get_running_loop(), pending),
        )
    return sorted(t.get_name() for t in pending)


def _flush_everything() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _overran(loop: asyncio.AbstractEventLoop, bound_s: float) -> None:
    log.error("stop_overran", seconds=bound_s, pending_tasks=pending_task_stacks(loop))
    _flush_everything()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    _flush_everything()
    os._exit(EXIT_STOP_OVERRAN)


def _arm_backstop_when_set(stop: asyncio.Event, seconds: float) -> None:
    """Arm the C-level backstop at the moment ``stop`` is set, not when the loop next runs.

    It covers a hang the loop cannot see (a blocked loop, a thread joined at exit), and the
    loop may be blocked already: a role that sets its own stop from a failing handler may
    have more such handlers queued behind it, each holding the loop (an actor whose engine
    died logged one traceback per item in flight), and a watchdog task would only run after them.
    """
    set_event = stop.set

    def set_and_arm() -> None:
        if not stop.is_set():
            faulthandler.dump_traceback_later(seconds, repeat=False, file=sys.stderr, exit=True)
        set_event()

    stop.set = set_and_arm  # type: ignore[method-assign]


def stop_on_signals(
    stop: asyncio.Event, bound_s: float = STOP_BOUND_S, backstop_after_s: float = BACKSTOP_AFTER_S
) -> None:
    """SIGINT/SIGTERM set ``stop``; once it is set, by anyone, the process ends within ``bound_s``.

    For process entry points only: the watchdog exits the whole process.
    """
    loop = asyncio.get_running_loop()
    _arm_backstop_when_set(stop, bound_s + backstop_after_s)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def arm_when_stopping() -> None:
        await stop.wait()
        loop.call_later(bound_s, _overran, loop, bound_s)

    # The loop keeps only weak references to tasks; a set event arms at most once.
    watchdog = loop.create_task(arm_when_stopping(), name="stop-watchdog")
    _WATCHDOGS.add(watchdog)
    watchdog.add_done_callback(_WATCHDOGS.discard)


def run_role(main: Coroutine[Any, Any, int | None], leftover_grace_s: float = LOOPS_END_S) -> int:
    """``asyncio.run(main)`` for a role's process, with a clean-up that cannot hang.

    Returns ``main``'s exit status, or ``EXIT_STOP_OVERRAN`` when tasks were still running
    after it and did not end within ``leftover_grace_s`` of their cancellation.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code: int | None = 1
    try:
        code = loop.run_until_complete(main)
    finally:
        for task in asyncio.all_tasks(loop):
            if task.get_name() == "stop-watchdog":  # not a leftover: it only waits for the event
                task.cancel()
        leftovers = [t for t in asyncio.all_tasks(loop) if not t.done() and t.get_name() != "stop-watchdog"]
        if leftovers:
            stuck = loop.run_until_complete(end_tasks(leftovers, leftover_grace_s))
            if stuck:
                code = EXIT_STOP_OVERRAN
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        # A worker thread that never returns would block this forever; the backstop covers the
        # rest of the exit, this bound keeps the loop's own clean-up short.
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), timeout=leftover_grace_s))
        asyncio.set_event_loop(None)
        loop.close()
    return int(code or 0)
