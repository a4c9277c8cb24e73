"""`tracerl bus`: start nats-server (or cluster nodes), write credentials, provision the run,
serve until a signal."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import nats.errors
import nats.js.errors

from protocol.subjects import Subjects
from tracerl.config import BusConfig, dump_config
from tracerl.lifecycle import EXIT_STOP_OVERRAN, LOOPS_END_S, end_tasks, run_role, stop_on_signals
from tracerl.logs import configure_logging, get_logger

from .client import BusClient
from .config import BusServerConfig
from .provision import provision_run, run_dead_letter_sweeper
from .server import BusServer, ca_paths

log = get_logger(__name__)


def run(config: BusServerConfig) -> int:
    configure_logging("bus", config.run.run_dir, config.log.level, config.log.json_file)
    run_dir = Path(config.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bus.yaml").write_text(dump_config(config))
    server = BusServer(config)
    server.start()
    try:
        return run_role(serve(config, server))
    finally:
        server.stop()


async def serve(config: BusServerConfig, server: BusServer, stop: asyncio.Event | None = None) -> int:
    """Provision every run, announce where to connect, sweep dead letters until ``stop``.

    A node joining a cluster only serves: the first node provisions the replicated
    streams and sweeps the dead letters for the whole cluster.
    """
    stop = stop or _stop_on_signals(config.run.stop_timeout_s)
    if config.cluster.join:
        _announce(server, joined=True)
        await stop.wait()
        log.info("bus_stopping")
        return 0
    if config.cluster.enabled:
        print(
            f"tracerl bus: cluster {config.cluster.name!r}: waiting for {config.replicas} JetStream nodes "
            f"(up to {config.cluster.form_timeout_s:g} s); other hosts join with a copy of "
            f"{server.credentials_file('admin').parent}",
            flush=True,
        )
    await asyncio.to_thread(server.wait_jetstream_ready, config.replicas, config.cluster.form_timeout_s)
    admin = await BusClient.connect(
        "admin", BusConfig(servers=server.urls), config.run, credentials=server.credentials["admin"]
    )
    try:
        runs = [Subjects(run_id) for run_id in server.run_ids]
        await provision_runs(admin, config, server.run_ids)
        _announce(server, joined=False)
        sweepers = [asyncio.create_task(run_dead_letter_sweeper(admin.js, subjects, stop)) for subjects in runs]
        await stop.wait()
        log.info("bus_stopping")
        # A sweep in progress finishes (a poisoned message moved but not yet deleted would be
        # moved twice); one that does not finish in time is cancelled.
        await asyncio.wait(sweepers, timeout=LOOPS_END_S)
        return EXIT_STOP_OVERRAN if await end_tasks(sweepers) else 0
    finally:
        await admin.close()


async def provision_runs(admin: BusClient, config: BusServerConfig, run_ids: list[str]) -> None:
    """Provision each run with ``config.stream_limits`` (replicas resolved for the cluster).

    Right after a cluster forms, the meta leader may still refuse to place replicas on
    peers it has not heard from; that passes within seconds, so a cluster retries until
    ``cluster.form_timeout_s``. A single server has nothing to wait for and fails at once.
    """
    deadline = time.monotonic() + config.cluster.form_timeout_s
    for run_id in run_ids:
        subjects = Subjects(run_id)
        while True:
            try:
                await provision_run(admin.js, subjects, config.stream_limits)
                break
            except (nats.js.errors.APIError, nats.errors.TimeoutError) as err:
                if not config.cluster.enabled or time.monotonic() > deadline:
                    raise
                log.info("provision_retry", run_id=run_id, replicas=config.replicas, error=repr(err))
                await asyncio.sleep(0.5)


def _announce(server: BusServer, *, joined: bool) -> None:
    cluster = server.config.cluster
    where = ", ".join(server.urls)
    if cluster.enabled:
        names = ", ".join(node.name for node in server.nodes)
        what = "joined" if joined else "serving"
        print(f"tracerl bus: cluster {cluster.name!r} {what} as {names}, replicas={server.config.replicas}", flush=True)
    security = "TLS, run CA " + str(ca_paths(server.config.run.run_dir)[0]) if server.ca is not None else "plain"
    print(f"tracerl bus: listening on {where} (runs: {', '.join(server.run_ids)}; {security})", flush=True)
    for actor_id in server.actor_credentials():
        print(f"  actor {actor_id} credentials: {server.credentials_file('actor', actor_id)}", flush=True)
    # Last, so that a line naming the learner's credentials means everything above was printed.
    for role in server.credentials:
        print(f"  {role:<9} credentials: {server.credentials_file(role)}", flush=True)


def _stop_on_signals(bound_s: float) -> asyncio.Event:
    stop = asyncio.Event()
    stop_on_signals(stop, bound_s)
    return stop


if __name__ == "__main__":  # pragma: no cover - `tracerl bus` is the entry point
    sys.exit(run(BusServerConfig()))
