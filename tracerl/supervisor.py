"""Start role processes, pin them to cores, and stop them all cleanly.

``tracerl up`` runs every role as its own OS process, exactly as a user would start them
by hand on separate hosts; this module only adds the bookkeeping of doing that for them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracerl.logs import get_logger

log = get_logger(__name__)


def parse_cpu_list(spec: str) -> list[int]:
    """'0', '0-1', '0,2-3' -> sorted core ids; '' means no pinning."""
    cores: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        try:
            start, end = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad cpu list {spec!r}: expected e.g. '0' or '0-1,3'") from None
        if start < 0 or end < start:
            raise ValueError(f"bad cpu range {part!r} in {spec!r}")
        cores.update(range(start, end + 1))
    return sorted(cores)


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path
    cpus: list[int] = field(default_factory=list)
    # What start() was given, so restart() can run the same role again.
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Killed on purpose (kill/restart): its exit is not a failure.
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


_PR_SET_CHILD_SUBREAPER = 36


class Supervisor:
    def __init__(self, run_dir: str | Path) -> None:
        self.log_dir = Path(run_dir) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, ManagedProcess] = {}

    def adopt_orphans(self) -> None:
        """Become the parent of every role's descendants whose parent dies (Linux).

        A role killed with its process group leaves its helpers (vLLM's engine core,
        nats-server) as zombies of whichever ancestor reaps orphans; after this call that
        is this process, and ``reap_orphans`` collects them.
        """
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def reap_orphans(self, kill: bool = False) -> int:
        """Collect adopted children that have exited (with ``kill``, SIGKILL the living ones
        first); the roles' own processes are left to their Popen."""
        import psutil

        own = {p.popen.pid for p in self.processes.values()}
        reaped = 0
        for child in psutil.Process().children():
            if child.pid in own:
                continue
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    # Blocking only when cleaning up for good: a big process's leader shows as
                    # a zombie while its other threads still tear down, which takes seconds.
                    pid, _ = os.waitpid(child.pid, 0 if kill else os.WNOHANG)
                    reaped += int(pid != 0)
                elif kill:
                    child.kill()
                    child.wait(timeout=5)  # psutil reaps a child it waits for
                    reaped += 1
            except (psutil.Error, ChildProcessError):
                pass
        return reaped

    def start(
        self, name: str, args: list[str], cpus: list[int] | None = None, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        """Run ``tracerl ARGS`` (the same CLI a user types) as process ``name``."""
        if name in self.processes and self.processes[name].alive:
            raise RuntimeError(f"process {name!r} is already running")
        argv = [sys.executable, "-m", "tracerl", *args]
        log_path = self.log_dir / f"{name}.out"
        cores = list(cpus or [])
        available = os.sched_getaffinity(0)
        if cores and not set(cores) <= available:
            raise ValueError(f"{name}: cpus {cores} not all available (have {sorted(available)})")

        def pin() -> None:  # runs in the child before exec, so the role never runs unpinned
            os.setsid()  # own process group: Ctrl-C in the terminal reaches only the supervisor
            if cores:
                os.sched_setaffinity(0, cores)

        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, preexec_fn=pin
            )
        proc = ManagedProcess(name, argv, popen, log_path, cores, list(args), dict(env or {}))
        self.processes[name] = proc
        log.info("process_started", name=name, pid=popen.pid, cpus=cores or "any")
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes[name]
        proc.killed = True
        if proc.alive:
            os.killpg(proc.popen.pid, sig)
            proc.popen.wait()
        log.info("process_killed", name=name, signal=signal.Signals(sig).name)

    def restart(self, name: str, sig: int = signal.SIGKILL) -> ManagedProcess:
        """Kill ``name`` (with its whole process group) and start it again, same arguments.

        The one way a role is crashed and brought back (``tracerl bench chaos``): a role
        must recover from its own durable state, exactly as after a crash of its host.
        """
        old = self.processes[name]
        self.kill(name, sig)
        return self.start(name, old.args, old.cpus, old.env)

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        proc = self.processes[name]
        if proc.alive:
            try:
                os.killpg(proc.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("process_stop_timeout", name=name, timeout_s=timeout_s)
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        # A SIGTERM'd child's own group may still hold helpers (vLLM's engine core): reap them.
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.popen.returncode

    def stop_all(self, order: list[str] | None = None, timeout_s: float = 20.0) -> None:
        names = order or list(reversed(list(self.processes)))
        for name in names:
            if name in self.processes:
                self.stop(name, timeout_s)

    def failed(self) -> list[ManagedProcess]:
        return [
            p for p in self.processes.values() if not p.alive and not p.killed and p.popen.returncode not in (0, None)
        ]

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.processes[name].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
