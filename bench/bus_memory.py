"""nats-server's resident memory across weights publications, with and without its memory limit.

Each cycle does what a run does with one policy version, through the project's own calls:
the learner puts ``policy-v<i>`` (``BusClient.put_object``, 1 MiB chunks), an actor reads it
back (``get_object``) and checks its size, and the learner's retention deletes the versions
older than ``i - keep`` (``prune_weights``: chunks, delete marker and all). The bus is
started by ``BusServer`` as in a run, once per memory limit, and its resident memory is read
from ``/varz`` every few cycles.

Judged by growth, not level: the resident memory in the last fifth of the cycles against the
first fifth after a warm-up. The deleted versions' chunks and delete markers must not stay in
the store's blocks (each pinned block keeps its cache: about one object per cycle), and with a
limit the resident memory must stay near it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bus.client import BusClient
from bus.config import MIB, BusServerConfig, StreamLimits
from bus.provision import provision_run
from bus.server import BusServer
from learner.weights_retention import prune_weights, weights_object_name
from protocol.subjects import Subjects
from tracerl.config import BusConfig, LogConfig, RunConfig
from tracerl.logs import get_logger

log = get_logger(__name__)

RUN_ID = "busmemory"
# The staleness bound of the default run: the retention keeps this many versions behind the newest.
KEEP_VERSIONS = 3


@dataclass(frozen=True)
class MemoryCurve:
    memory_limit_mib: int
    object_bytes: int
    cycles: int
    # (cycle, nats-server resident bytes) after that cycle.
    samples: list[tuple[int, int]]
    seconds: float


@dataclass(frozen=True)
class CurveSummary:
    memory_limit_mib: int
    early_mib: float
    late_mib: float
    peak_mib: float
    growth_mib: float
    growth_per_1000_cycles_mib: float


def summarise_curve(curve: MemoryCurve) -> CurveSummary:
    """Median resident memory of the first and last fifth of the samples after the first tenth (warm-up)."""
    usable = [(c, rss) for c, rss in curve.samples if c >= curve.cycles // 10]
    if len(usable) < 5:
        raise ValueError(f"{len(usable)} samples after the warm-up: too few to judge growth")
    fifth = max(1, len(usable) // 5)
    early = statistics.median(rss for _, rss in usable[:fifth]) / MIB
    late = statistics.median(rss for _, rss in usable[-fifth:]) / MIB
    span_cycles = statistics.median(c for c, _ in usable[-fifth:]) - statistics.median(c for c, _ in usable[:fifth])
    growth = late - early
    return CurveSummary(
        memory_limit_mib=curve.memory_limit_mib,
        early_mib=round(early, 1),
        late_mib=round(late, 1),
        peak_mib=round(max(rss for _, rss in curve.samples) / MIB, 1),
        growth_mib=round(growth, 1),
        growth_per_1000_cycles_mib=round(growth * 1000 / span_cycles, 1) if span_cycles else 0.0,
    )


def nats_server_rss(monitor_url: str) -> int:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=5.0) as resp:
        return int(json.load(resp)["mem"])


async def weights_cycles(
    server: BusServer, bus: BusConfig, run: RunConfig, cycles: int, object_bytes: int, sample_every: int
) -> list[tuple[int, int]]:
    """Publish, read back and retire ``cycles`` versions; nats-server's RSS every ``sample_every`` cycles."""
    blob = os.urandom(object_bytes)
    samples: list[tuple[int, int]] = []
    learner = await BusClient.connect("learner", bus, run)
    actor = await BusClient.connect("actor", bus, run)
    try:
        for version in range(cycles):
            await learner.put_object(weights_object_name(version), blob)
            fetched = await actor.get_object(weights_object_name(version))
            if len(fetched) != object_bytes:
                raise RuntimeError(f"version {version}: read {len(fetched)} of {object_bytes} bytes")
            await prune_weights(learner, version, KEEP_VERSIONS, actor_timeout_s=60.0, now=time.time())
            if version % sample_every == 0 or version == cycles - 1:
                samples.append((version, nats_server_rss(server.monitor_url)))
    finally:
        await actor.close()
        await learner.close()
    return samples


def measure_curve(
    work_dir: Path, memory_limit_mib: int, cycles: int, object_bytes: int, sample_every: int = 10
) -> MemoryCurve:
    """A fresh bus with ``memory_limit_mib`` (0: none), provisioned like a run, through ``weights_cycles``."""
    run = RunConfig(run_id=RUN_ID, run_dir=str(work_dir / f"limit-{memory_limit_mib}"))
    config = BusServerConfig(
        run=run,
        log=LogConfig(level="warning", json_file=False),
        port=0,
        monitor_port=0,
        memory_limit_mib=memory_limit_mib,
        max_payload=8 * MIB,
    )

    async def main(server: BusServer) -> list[tuple[int, int]]:
        bus = BusConfig(servers=[server.url])
        admin = await BusClient.connect("admin", bus, run)
        try:
            await provision_run(admin.js, Subjects(RUN_ID), StreamLimits(nodes_max_bytes=MIB, trees_max_bytes=2 * MIB))
        finally:
            await admin.close()
        return await weights_cycles(server, bus, run, cycles, object_bytes, sample_every)

    started = time.monotonic()
    with BusServer(config) as server:
        samples = asyncio.run(main(server))
    return MemoryCurve(memory_limit_mib, object_bytes, cycles, samples, round(time.monotonic() - started, 1))


def bus_memory_markdown(curves: Sequence[MemoryCurve]) -> str:
    summaries = [summarise_curve(c) for c in curves]
    first = curves[0]
    lines = [
        "# Bus memory across weights versions",
        "",
        f"{first.cycles} cycles of one {first.object_bytes / MIB:g} MiB policy version each: the learner puts it"
        f" (1 MiB chunks), an actor reads it back, retention deletes the versions more than {KEEP_VERSIONS}"
        " behind. One fresh bus (`BusServer`, as in a run) per memory limit; nats-server's resident memory"
        " from `/varz` every 10 cycles. Early and late are the medians of the first and last fifth of the"
        " samples after the first tenth of the cycles.",
        "",
        "| memory limit | early | late | peak | growth | per 1000 cycles | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for curve, s in zip(curves, summaries, strict=True):
        limit = f"{s.memory_limit_mib} MiB" if s.memory_limit_mib else "none"
        lines.append(
            f"| {limit} | {s.early_mib:.0f} MiB | {s.late_mib:.0f} MiB | {s.peak_mib:.0f} MiB"
            f" | {s.growth_mib:+.0f} MiB | {s.growth_per_1000_cycles_mib:+.0f} MiB | {curve.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def bus_memory_command(
    work_dir: Path, results_dir: Path, cycles: int, object_mib: float, memory_limits_mib: Sequence[int]
) -> int:
    curves = [measure_curve(work_dir, limit, cycles, int(object_mib * MIB)) for limit in memory_limits_mib]
    results_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "curves": [asdict(c) for c in curves],
        "summaries": [asdict(summarise_curve(c)) for c in curves],
    }
    (results_dir / "bus_memory.json").write_text(json.dumps(payload, indent=1) + "\n")
    markdown = bus_memory_markdown(curves)
    (results_dir / "bus_memory.md").write_text(markdown)
    print(markdown)
    return 0
