"""Launch a real nats-server with JetStream, per-role users and per-run permissions.

The config file is pure data built by ``render_server_config`` (nats-server reads JSON, a
subset of its own format). ``BusServer`` is the process shell around it: write the file,
start the binary, wait for ``/healthz``, hot-reload when more runs are authorised, stop.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracerl.logs import get_logger
from tracerl.typed import SchemaError, from_plain, to_plain

from .config import BusServerConfig
from .permissions import ROLES, inbox_prefix, role_permissions

log = get_logger(__name__)


class BusServerError(RuntimeError):
    """nats-server could not be found, started, reloaded or stopped."""


@dataclass(frozen=True)
class RoleCredentials:
    """What a role needs to connect; stored as ``<run_dir>/credentials/<role>.json`` (0600)."""

    role: str
    user: str
    password: str
    servers: list[str]
    inbox_prefix: str

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create with 0600 from the start so the password is never world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(to_plain(self), handle, indent=2)
        os.chmod(path, 0o600)

    @classmethod
    def read(cls, path: Path) -> RoleCredentials:
        try:
            data = json.loads(Path(path).read_text())
            return from_plain(cls, data)
        except (OSError, json.JSONDecodeError, SchemaError) as err:
            raise BusServerError(f"cannot read credentials {path}: {err}") from None


def credentials_path(run_dir: str | Path, role: str) -> Path:
    return Path(run_dir) / "credentials" / f"{role}.json"


def generate_credentials(servers: list[str], token: Callable[[], str]) -> dict[str, RoleCredentials]:
    """One user per role with a fresh password from ``token`` (randomness is injected)."""
    return {
        role: RoleCredentials(role=role, user=role, password=token(), servers=servers, inbox_prefix=inbox_prefix(role))
        for role in ROLES
    }


def render_server_config(
    *,
    host: str,
    port: int,
    monitor_port: int,
    store_dir: str,
    pid_file: str,
    max_payload: int,
    credentials: dict[str, RoleCredentials],
    run_ids: list[str],
) -> dict[str, Any]:
    users = [
        {
            "user": cred.user,
            "password": cred.password,
            "permissions": role_permissions(role, run_ids).as_server_config(),
        }
        for role, cred in credentials.items()
    ]
    return {
        "host": host,
        "port": port,
        "http": f"127.0.0.1:{monitor_port}",
        "max_payload": max_payload,
        "pid_file": pid_file,
        "jetstream": {"store_dir": store_dir},
        "authorization": {"users": users},
    }


def find_server_binary(configured: str = "") -> str:
    """The configured path, else the binary installed next to this Python, else PATH."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise BusServerError(f"nats-server binary {configured!r} is not executable")
        return configured
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BusServerError("nats-server not found next to the Python interpreter nor on PATH")
    return found


def _terminate_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even by SIGKILL), the server
    gets SIGTERM and shuts down cleanly instead of holding the port and store forever."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BusServer:
    """A running nats-server for one or more runs. Use as a context manager or start/stop."""

    def __init__(self, config: BusServerConfig) -> None:
        self.config = config
        self.port = config.port or free_port(config.host)
        self.monitor_port = config.monitor_port or free_port("127.0.0.1")
        self.run_ids = config.run_ids
        self.credentials = self._load_or_generate_credentials()
        run_dir = Path(config.run.run_dir)
        self.config_path = run_dir / "nats-server.conf"
        self.log_path = run_dir / "logs" / "nats-server.log"
        self.pid_path = run_dir / "nats-server.pid"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def credentials_file(self, role: str) -> Path:
        return credentials_path(self.config.run.run_dir, role)

    def _load_or_generate_credentials(self) -> dict[str, RoleCredentials]:
        # Reusing existing files lets a restarted bus accept roles that are still reconnecting.
        servers = [self.url]
        paths = {role: credentials_path(self.config.run.run_dir, role) for role in ROLES}
        if all(p.is_file() for p in paths.values()):
            loaded = {role: RoleCredentials.read(p) for role, p in paths.items()}
            return {
                role: RoleCredentials(c.role, c.user, c.password, servers, c.inbox_prefix) for role, c in loaded.items()
            }
        return generate_credentials(servers, lambda: secrets.token_urlsafe(24))

    def write_credentials(self) -> dict[str, Path]:
        paths = {}
        for role, cred in self.credentials.items():
            path = self.credentials_file(role)
            cred.write(path)
            paths[role] = path
        return paths

    def _write_config(self) -> None:
        rendered = render_server_config(
            host=self.config.host,
            port=self.port,
            monitor_port=self.monitor_port,
            store_dir=str(self.config.store_path.resolve()),
            pid_file=str(self.pid_path.resolve()),
            max_payload=self.config.max_payload,
            credentials=self.credentials,
            run_ids=self.run_ids,
        )
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(rendered, handle, indent=2)

    def start(self) -> BusServer:
        if self._process is not None:
            raise BusServerError("server already started")
        binary = find_server_binary(self.config.server_binary)
        self.config.store_path.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.write_credentials()
        started = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_terminate_with_parent,
            )
        self._wait_healthy(started)
        log.info("nats_server_started", url=self.url, pid=self._process.pid, seconds=round(time.monotonic() - started, 3))
        return self

    def _wait_healthy(self, started: float) -> None:
        assert self._process is not None
        deadline = started + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BusServerError(f"nats-server exited with {self._process.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise BusServerError(f"nats-server not healthy after {self.config.startup_timeout_s} s; see {self.log_path}")

    def _config_load_time(self) -> str:
        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2.0) as resp:
            return json.loads(resp.read())["config_load_time"]

    def authorize_runs(self, run_ids: list[str], timeout_s: float = 5.0) -> None:
        """Add permissions for more runs and hot-reload; returns once the server applied them."""
        merged = list(dict.fromkeys([*self.run_ids, *run_ids]))
        if merged == self.run_ids:
            return
        if self._process is None or self._process.poll() is not None:
            raise BusServerError("server is not running")
        before = self._config_load_time()
        self.run_ids = merged
        self._write_config()
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self._config_load_time() == before:
            if time.monotonic() > deadline:
                raise BusServerError(f"nats-server did not reload within {timeout_s} s; see {self.log_path}")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (nats-server flushes JetStream and exits), SIGKILL only if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("nats_server_kill", pid=process.pid, reason="no exit after SIGTERM")
                process.kill()
                process.wait()
        log.info("nats_server_stopped", pid=process.pid, returncode=process.returncode)
        return process.returncode

    def __enter__(self) -> BusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
