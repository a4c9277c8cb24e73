"""A real run of every role for the run-level benches (chaos, flood, join): start it, watch
it, read its logs and metrics, stop it.

It starts the roles exactly as `tracerl up` does (same per-role configs, same supervisor,
each role its own process group), but leaves the run's course to the bench: the chaos
bench kills roles, the flood bench floods the bus, the join bench adds an actor.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from protocol import replace
from tracerl.logs import configure_logging
from tracerl.metrics import metrics_path, read_metrics

# The small run of the run-level benches: the e2e run (two prompts of two rollouts per step)
# with two actors. The learner checkpoints every step so that a restart never takes back a
# version it announced; a killed actor's work returns after 10 s.
SMALL_RUN: dict[str, Any] = {
    "num_actors": 2,
    "eval_tasks": 0,
    "progress_interval_s": 10.0,
    "learner.training.checkpoint_every_steps": 1,
    "learner.training.step_wait_s": 10.0,
    "allocator.core.strategy": "trace",
    "allocator.core.batch_prompts": 2,
    "allocator.core.group_size": 2,
    "allocator.core.step_budget_turns": 24,
    "allocator.core.staleness_eta": 2,
    "allocator.core.step_timeout_s": 120.0,
    "allocator.heldout.every_versions": 0,
    "bus.streams.ack_wait_s": 10.0,
    # The short warm start the test suite builds too, so both share its cache: 200 steps over
    # 500 demos, on a plain cosine (no plateau detection) so the build time is fixed.
    "model.demos.demos_per_env": 500,
    "model.training.steps": 200,
    "model.training.plateau_exit_loss": 0,
}


def fresh_run_dir(run_dir: Path, marker: str, bench: str) -> None:
    """An empty run directory; an old one is deleted only if this bench made it (``marker``).

    A checkpoint or stream left from an earlier sample would be resumed by the new run.
    """
    if run_dir.exists():
        if not (run_dir / marker).exists():
            raise SystemExit(
                f"tracerl bench {bench}: {run_dir} exists and is not a {bench} run directory; choose another"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / marker).touch()


def learner_steps(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(metrics_path(run_dir, "learner")) if "step" in r]


def last_record(run_dir: Path, name: str, key_prefix: str = "") -> dict[str, Any]:
    """The last record of ``metrics/<name>.jsonl`` that has a key starting with ``key_prefix``."""
    found: dict[str, Any] = {}
    for record in read_metrics(metrics_path(run_dir, name)):
        if not key_prefix or any(k.startswith(key_prefix) for k in record):
            found = record
    return found


def read_log_events(run_dir: Path, log_name: str) -> list[dict[str, Any]]:
    """Every record of ``logs/<log_name>.jsonl`` (a torn last line is skipped)."""
    path = run_dir / "logs" / f"{log_name}.jsonl"
    if not path.exists():
        return []
    events = []
    with path.open(errors="replace") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def count_log_events(run_dir: Path, log_name: str, event: str) -> int:
    path = run_dir / "logs" / f"{log_name}.jsonl"
    if not path.exists():
        return 0
    needle = f'"event": "{event}"'
    with path.open(errors="replace") as handle:
        return sum(1 for line in handle if needle in line)


class BenchRun:
    """The processes of one run, on fresh ports, with their configs in ``<run_dir>/config``."""

    def __init__(self, up: Any, label: str) -> None:
        from tracerl.config import write_resolved_config
        from tracerl.supervisor import Supervisor
        from tracerl.up import resolve_model_dir, write_role_configs

        self.up = up
        self.label = label
        self.run_dir = Path(up.run.run_dir)
        configure_logging(label, self.run_dir, up.log.level, up.log.json_file)
        write_resolved_config(up, "up")
        self.model_dir = resolve_model_dir(up)
        self.configs, self.config_dir = write_role_configs(up, self.model_dir)
        self.supervisor = Supervisor(self.run_dir)
        self.supervisor.adopt_orphans()  # killed roles leave helpers behind; they are reaped on each tick
        self.started = time.time()
        self._next_progress = self.started + up.progress_interval_s

    @property
    def servers(self) -> list[str]:
        return list(self.configs["learner"].bus.servers)

    @property
    def actor_names(self) -> list[str]:
        return sorted(n for n in self.supervisor.processes if n.startswith("actor-"))

    def start(self) -> None:
        from tracerl.up import start_roles

        self.started = time.time()
        start_roles(self.supervisor, self.up, list(self.configs), self.config_dir)

    def start_actor(self, name: str, like: str) -> None:
        """A new actor process ``name`` with the config of actor ``like`` under its own id."""
        from tracerl.up import start_role, write_role_config

        self.configs[name] = replace(self.configs[like], actor_id=name)
        write_role_config(self.config_dir, name, self.configs[name])
        start_role(self.supervisor, self.up, name, self.config_dir)

    def step(self) -> int:
        return max((int(r["step"]) for r in learner_steps(self.run_dir)), default=0)

    def failure(self) -> str | None:
        """The first role that exited with an error on its own, with the last lines of its log."""
        from tracerl.up import check_alive

        try:
            check_alive(self.supervisor)
        except SystemExit as err:
            return str(err)
        return None

    def alive(self) -> dict[str, bool]:
        return {name: proc.alive for name, proc in sorted(self.supervisor.processes.items())}

    def tick(self) -> None:
        """Reap what killed roles left behind and print the progress line when it is due."""
        from tracerl.up import progress_line

        self.supervisor.reap_orphans()
        if time.time() >= self._next_progress:
            print(f"[{self.label}] " + progress_line(self.run_dir, self.started), flush=True)
            self._next_progress = time.time() + self.up.progress_interval_s

    def wait_until(self, condition, timeout_s: float, what: str) -> str | None:
        """Poll ``condition`` while watching the roles; the failure that ended the wait, if any."""
        deadline = time.time() + timeout_s
        while not condition():
            failure = self.failure()
            if failure:
                return failure
            if time.time() > deadline:
                return f"timed out after {timeout_s:.0f} s waiting for {what}"
            self.tick()
            time.sleep(0.25)
        return None

    def stop_each(self, names: Sequence[str], timeout_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM ``names`` in order, each after the one before has exited; their exit codes."""
        known = [name for name in names if name in self.supervisor.processes]
        return {name: self.supervisor.stop(name, timeout_s=timeout_s) for name in known}

    def stop(self) -> None:
        from tracerl.up import stop_roles

        stop_roles(self.supervisor)
        self.supervisor.reap_orphans(kill=True)

    def __enter__(self) -> BenchRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bench_up_config(defaults: Mapping[str, Any], overrides: Sequence[str], forced: Sequence[str] = ()) -> Any:
    """The `tracerl up` config of a bench run: its defaults, then the user's overrides, then
    what the bench cannot work without."""
    from tracerl.config import load_config, override_args
    from tracerl.upconfig import UpConfig

    return load_config(UpConfig, None, [*override_args(defaults), *overrides, *forced])


def wait_actors_serving(run: BenchRun, timeout_s: float) -> str | None:
    """Until every actor process has logged ``actor_serving`` (its consumers exist)."""
    return run.wait_until(
        lambda: all(count_log_events(run.run_dir, f"actor-{n}", "actor_serving") for n in run.actor_names),
        timeout_s,
        "every actor to serve",
    )


def results_of_processes(
    target: Callable[..., None], args: Sequence[tuple[Any, ...]], what: str, join_timeout_s: float = 60.0
) -> list[Any]:
    """Run ``target(*a, start, out)`` in one spawned process per ``a`` of ``args``, released
    together by the barrier ``start``; each puts one result on ``out``. The results, in the
    order they came; a process that exits with an error ends the wait with a RuntimeError."""
    ctx = multiprocessing.get_context("spawn")  # the parent runs an event loop and sockets
    start, out = ctx.Barrier(len(args)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args]
    for proc in procs:
        proc.start()
    results: list[Any] = []
    try:
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"{what} process exited with {failed[0]}") from None
    finally:
        for proc in procs:
            proc.join(timeout=join_timeout_s)
            if proc.is_alive():
                proc.terminate()
    return results
