"""Processes that end when their parent process ends, however the parent ends.

A vLLM engine runs in processes of its own: the engine core, and under it the workers, all
started with ``multiprocessing``. When the process that owns the engine dies by SIGKILL,
nothing in vLLM ends them; they are re-parented and keep their memory (and, on a GPU host,
the device) until someone kills them.

Every process that ``multiprocessing`` starts inside ``multiprocessing_children_end_with_this_process()``
watches its parent from a daemon thread and SIGKILLs itself once the parent is gone. It passes
the same watch on to the processes it starts with ``multiprocessing`` in turn, so a worker
ends with the engine core, which ends with the actor. The watch reaches a new process one of
two ways:

- forked (multiprocessing's fork method): a hook registered with ``os.register_at_fork``;
- spawned (a fresh interpreter): the ``sitecustomize`` in ``tracerl/child_hooks``, which the
  block puts first on PYTHONPATH.

Other interpreters started with that PYTHONPATH are left alone, above all multiprocessing's
resource tracker: it must outlive the processes it serves, to remove the shared memory and
semaphores a killed process leaves, and it ends by itself once they are all gone.

The kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is not used: it fires when the
*thread* that started the child exits, not the process, so a process started from a
short-lived thread (a process pool grown by a thread-pool task) would be killed while its
parent is alive. A watch of the parent process has no such trap. An interpreter started
with ``-E`` or ``-I`` ignores PYTHONPATH and is not reached.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import multiprocessing.spawn
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tracerl.logs import get_logger

log = get_logger(__name__)

#: The pid of the process whose end ends a new process: the one that started it.
OWNER_PID_ENV = "TRACERL_OWNER_PID"
#: Holds only the ``sitecustomize`` that starts the watch in a spawned interpreter.
HOOK_DIR = Path(__file__).resolve().with_name("child_hooks")
#: How often a process looks at its parent; an orphan lives at most about this long.
WATCH_INTERVAL_S = 0.2

_watch_forked_children = False
_fork_hook_registered = False
_watching = False


def stat_says_exited(stat: str) -> bool:
    """Whether a ``/proc/PID/stat`` line shows a process that has exited (a zombie has: it
    only waits to be reaped). The state is the first field after the parenthesised name."""
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("Z", "X")


def process_running(pid: int) -> bool:
    try:
        return not stat_says_exited(Path(f"/proc/{pid}/stat").read_text())
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: existence is the best that can be known
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _is_hook_dir(path_entry: str) -> bool:
    return Path(path_entry or os.curdir).resolve() == HOOK_DIR


def python_path_with_hook(python_path: str | None) -> str:
    """PYTHONPATH with the hook directory first and nowhere else."""
    entries = [entry for entry in (python_path or "").split(os.pathsep) if entry and not _is_hook_dir(entry)]
    return os.pathsep.join([str(HOOK_DIR), *entries])


def _end_now(parent: int) -> None:
    log.warning("parent_process_gone", pid=os.getpid(), parent_pid=parent)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    _end_now(parent)


def end_with_parent() -> None:
    """End this process (SIGKILL) when its parent process ends; its multiprocessing children do the same."""
    global _watching
    if _watching:
        return
    parent = os.getppid()
    owner = int(os.environ.get(OWNER_PID_ENV) or parent)
    # The owner may have died before this process got here; re-parenting hid that from getppid.
    if not process_running(owner):
        _end_now(owner)
    _watching = True
    _pass_on_to_children()
    threading.Thread(target=_watch, args=(parent,), name="end-with-parent", daemon=True).start()


def _after_fork_in_child() -> None:
    global _watching
    _watching = False  # the parent's watch thread did not survive the fork
    if _watch_forked_children:
        end_with_parent()


def _pass_on_to_children() -> None:
    global _watch_forked_children, _fork_hook_registered
    os.environ[OWNER_PID_ENV] = str(os.getpid())
    os.environ["PYTHONPATH"] = python_path_with_hook(os.environ.get("PYTHONPATH"))
    _watch_forked_children = True
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


@contextlib.contextmanager
def multiprocessing_children_end_with_this_process() -> Iterator[None]:
    """Processes that ``multiprocessing`` starts in this block, and the ones they start with it,
    end when their parent process ends.

    Not for concurrent use from several threads: it sets and restores process-wide state.
    """
    global _watch_forked_children
    saved = {name: os.environ.get(name) for name in (OWNER_PID_ENV, "PYTHONPATH")}
    watching_forks = _watch_forked_children
    _pass_on_to_children()
    try:
        yield
    finally:
        _watch_forked_children = watching_forks
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_shadowed_sitecustomize() -> None:
    """Run the ``sitecustomize`` the hook's own hides further down ``sys.path``, if there is one."""
    search = [entry for entry in sys.path if not _is_hook_dir(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", search)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def on_interpreter_start() -> None:
    """What the hook's ``sitecustomize`` does in every interpreter started with it on PYTHONPATH."""
    if os.environ.get(OWNER_PID_ENV):
        if multiprocessing.spawn.is_forking(sys.argv):
            end_with_parent()
        else:
            # Not a multiprocessing child: neither it nor what it starts is tied to the owner.
            del os.environ[OWNER_PID_ENV]
    run_shadowed_sitecustomize()
