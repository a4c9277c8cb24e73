"""Session-wide fixtures: a real nats-server and the tiny models, each built once per session.

The exit guard below exists because a pytest process that has printed its summary can still
hang at interpreter shutdown: Python joins non-daemon threads and multiprocessing children
there, and a vLLM engine-core child or a library thread that never ends keeps CI waiting until
its wall clock runs out. The guard names what was left behind (so the leak can be fixed), kills
leftover children, and leaves with pytest's own exit status if shutdown does not finish.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import sys
import threading

import pytest

pytest_plugins = ["tests.fixtures.nats", "tests.fixtures.models"]

#: Seconds the normal interpreter shutdown gets before the guard ends the process.
SHUTDOWN_GRACE_S = 30.0
#: Seconds from the last test's end to the process's exit (summary and unconfigure included).
SESSION_END_GRACE_S = 120.0
_PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Orphaned descendants (an engine core whose parent died, a server started in its own
    session) re-parent to this process instead of init, so the guard can still see them."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


_adopt_orphans()


def _leftover_children() -> list:
    """Live descendants; adopted orphans that already exited are only reaped."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                continue
        except (psutil.Error, ChildProcessError):
            continue
        alive.append(child)
    return alive


def _describe_leftovers(children: list) -> list[str]:
    lines = []
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive():
            lines.append(f"non-daemon thread still alive: {thread.name}")
    for child in children:
        try:
            lines.append(f"child process still alive: pid={child.pid} {' '.join(child.cmdline())[:160]}")
        except Exception:  # noqa: BLE001 - the child may exit while we look at it
            lines.append(f"child process still alive: pid={child.pid}")
    return lines


def _kill(children: list) -> None:
    import psutil

    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


def _exit_after_grace(config: pytest.Config, grace_s: float) -> None:
    def watchdog() -> None:
        # Runs only if the end of the session outlives the grace period; daemon threads keep
        # running while the main thread is blocked (a zmq context waiting on a dead engine's
        # sockets has been seen there, before pytest_unconfigure is ever reached).
        sys.stderr.write(f"\ntest session: end still blocked after {grace_s:.0f}s; stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        _kill(_leftover_children())
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(int(getattr(config, "_tracerl_exit_status", 0)))

    timer = threading.Timer(grace_s, watchdog)
    timer.daemon = True
    timer.start()


def _stop_own_resource_tracker() -> None:
    """The in-process vLLM engine starts this process's multiprocessing resource tracker, which
    by design lives until its parent exits; stopped here it is not mistaken for a leak."""
    from multiprocessing import resource_tracker

    try:
        resource_tracker._resource_tracker._stop()
    except (AttributeError, OSError, ChildProcessError):
        pass


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_own_resource_tracker()
    children = _leftover_children()
    leftovers = _describe_leftovers(children)
    if leftovers:
        sys.stderr.write(
            "\ntest session left these behind (a teardown leak to fix):\n  " + "\n  ".join(leftovers) + "\n"
        )
        sys.stderr.flush()
    _kill(children)
    _exit_after_grace(config, SHUTDOWN_GRACE_S)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._tracerl_exit_status = exitstatus  # type: ignore[attr-defined]
    # Armed here, before the summary is printed: the end of a session can block before
    # pytest_unconfigure runs, and then only an earlier watchdog still ends the process.
    _exit_after_grace(session.config, SESSION_END_GRACE_S)
