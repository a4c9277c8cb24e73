"""`tracerl bus`: start nats-server, write credentials, provision the run, serve until a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from protocol.subjects import Subjects
from tracerl.config import BusConfig, dump_config
from tracerl.logs import configure_logging, get_logger

from .client import BusClient
from .config import BusServerConfig
from .provision import provision_run, run_dead_letter_sweeper
from .server import BusServer

log = get_logger(__name__)


def run(config: BusServerConfig) -> int:
    configure_logging("bus", config.run.run_dir, config.log.level, config.log.json_file)
    run_dir = Path(config.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "bus.yaml").write_text(dump_config(config))
    server = BusServer(config)
    server.start()
    try:
        asyncio.run(serve(config, server))
    finally:
        server.stop()
    return 0


async def serve(config: BusServerConfig, server: BusServer, stop: asyncio.Event | None = None) -> None:
    """Provision every run, announce where to connect, sweep dead letters until ``stop``."""
    stop = stop or _stop_on_signals()
    admin = await BusClient.connect(
        "admin", BusConfig(servers=[server.url]), config.run, credentials=server.credentials["admin"]
    )
    try:
        runs = [Subjects(run_id) for run_id in server.run_ids]
        for subjects in runs:
            await provision_run(admin.js, subjects, config.streams)
        print(f"tracerl bus: listening on {server.url} (runs: {', '.join(server.run_ids)})", flush=True)
        for role in server.credentials:
            print(f"  {role:<9} credentials: {server.credentials_file(role)}", flush=True)
        sweepers = [asyncio.create_task(run_dead_letter_sweeper(admin.js, subjects, stop)) for subjects in runs]
        await stop.wait()
        log.info("bus_stopping")
        await asyncio.gather(*sweepers)
    finally:
        await admin.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


if __name__ == "__main__":  # pragma: no cover - `tracerl bus` is the entry point
    sys.exit(run(BusServerConfig()))
