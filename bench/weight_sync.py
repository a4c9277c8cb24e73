"""Weights at the size of real models: object-store put and fetch rates on a real nats-server,
and the weight-sync time per policy version they imply for a large model and many actors.

    tracerl bench weight-sync [--sizes-mib 256,1024] [--fetchers 1,2,4] [--receivers 1,2,4]

Measured. A nats-server started by the project's own launcher (``bus.server.BusServer``)
with the run provisioned as a run's bus provisions it. For each object size S, the learner
role puts S random bytes into the weights bucket with ``BusClient.put_object`` (the call,
chunk size and object name the learner publishes with); then for each fetcher count c, c
actor processes connected as the actor role wait at a barrier and each reads the whole
object with ``BusClient.get_object`` (the actor's call), then checks its sha256. The
aggregate fetch rate is c x S over the span from the first start to the last end. GB are
10^9 bytes. The machine's load average is recorded before and after: on 2 cores, the
fetchers, the server and anything else running share them.

Measured, the broadcast (``weights.transport: broadcast``). For each size and receiver count
c, c + 1 processes form a gloo group over loopback through a TCP store, as the learner and
its actors do (``weightsync.broadcast``: ``make_process_group``, ``send_frame``,
``receive_blob``; the bus only tells the actors where the store is, so it is not in this
path), wait at a barrier, and rank 0 broadcasts S random bytes as one version: the header
with its announcement, then ``--bucket-mib`` buckets. Each receiver checks the sha256
against the announcement. The time is from rank 0's start to the last receiver holding the
whole version; the object store's time for the same c is put + the fetch round's span, and
their ratio is recorded. On one machine the receivers share its cores and memory bandwidth
with the sender: gloo over loopback is a lower bound for NCCL over a GPU network.

Projected (``project_sync``). One version reaches every actor once the learner has put it
and the N actors have read it from the one server, whose egress the N readers share:

    t_sync(N) = S / put_rate + N x S / aggregate_fetch_rate(N) + S / sha256_rate

where ``aggregate_fetch_rate(N)`` is the best aggregate measured with at most N fetchers
(one server's egress does not grow with more readers than measured, so beyond them it is
taken as flat). That is set beside a learner step's time from the training FLOPs
6 x parameters x tokens at an assumed accelerator rate and utilisation (``learner_step_seconds``),
and beside a broadcast, at the rate measured here (``broadcast_rate_for``: the round with
the most receivers not above N, flat beyond) and at an assumed link rate of the
accelerators' network; neither grows with N (a pipelined ring or tree sends each byte over
each link once).

Results: bench/results/weight_sync.{md,json}.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.harness import results_of_processes
from bus.client import OBJECT_CHUNK_BYTES, BusClient
from bus.config import MIB, BusServerConfig, StreamLimits
from bus.provision import provision_run
from bus.server import BusServer
from learner.weights_retention import weights_announcement, weights_object_name
from protocol import Subjects
from tracerl.config import BusConfig, LogConfig, RunConfig
from tracerl.logs import configure_logging
from weightsync.broadcast import device_for, make_process_group, receive_blob, receive_header, send_frame
from weightsync.frames import FrameKind, decode_header, encode_header

RESULTS_DIR = Path(__file__).parent / "results"
GB = 1e9
RUN_ID = "weightsync"
FETCH_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class SyncAssumptions:
    """What the projection takes as given; every figure is written next to the results."""

    # Qwen3-14B-sized: 14.8 B parameters in bfloat16 is 29.6 GB; the round figure.
    model_bytes: float = 28e9
    model_parameters: float = 14e9
    actors: tuple[int, ...] = (8, 64)
    # One learner step: trained tokens (e.g. 256 trees of 4k computed tokens), on this many
    # accelerators of this bf16 dense peak (H100 SXM: 989 TFLOP/s) at this utilisation.
    step_tokens: float = 1_048_576
    learner_gpus: int = 8
    gpu_peak_flops: float = 989e12
    mfu: float = 0.4
    # A broadcast over the accelerators' network: one 200 Gb/s link per node, 25 GB/s.
    broadcast_bytes_per_s: float = 25e9

    def __post_init__(self) -> None:
        for name in ("model_bytes", "model_parameters", "step_tokens", "gpu_peak_flops", "broadcast_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.learner_gpus < 1 or not 0 < self.mfu <= 1:
            raise ValueError("learner_gpus must be >= 1 and mfu in (0, 1]")
        if not self.actors or min(self.actors) < 1:
            raise ValueError("actors must list counts >= 1")


@dataclass(frozen=True)
class SyncProjection:
    actors: int
    put_s: float
    fetch_s: float
    verify_s: float
    total_s: float
    aggregate_fetch_bytes_per_s: float
    broadcast_s: float
    learner_step_s: float
    sync_over_step: float
    # The broadcast at the rate measured here, and the sha256 check every actor makes.
    broadcast_measured_s: float = 0.0
    broadcast_over_step: float = 0.0


def learner_step_seconds(parameters: float, tokens: float, gpus: int, peak_flops: float, mfu: float) -> float:
    """Forward + backward of ``tokens`` through a dense model: 6 x parameters x tokens FLOPs."""
    return 6.0 * parameters * tokens / (gpus * peak_flops * mfu)


def aggregate_rate_for(actors: int, measured: dict[int, float]) -> float:
    """The best aggregate fetch rate measured with at most ``actors`` concurrent fetchers."""
    usable = [rate for fetchers, rate in measured.items() if fetchers <= actors]
    if not usable:
        raise ValueError(f"no fetch rate measured with at most {actors} fetchers")
    return max(usable)


def broadcast_rate_for(actors: int, measured: dict[int, float]) -> float:
    """The rate measured with the most receivers not above ``actors`` (flat beyond the largest)."""
    usable = [receivers for receivers in measured if receivers <= actors]
    if not usable:
        raise ValueError(f"no broadcast rate measured with at most {actors} receivers")
    return measured[max(usable)]


def project_sync(
    assumptions: SyncAssumptions,
    put_rate: float,
    aggregate_fetch: dict[int, float],
    sha256_rate: float,
    broadcast_rates: dict[int, float] | None = None,
) -> list[SyncProjection]:
    """Seconds from the learner's put to the last actor holding a verified version, per actor count."""
    size = assumptions.model_bytes
    step_s = learner_step_seconds(
        assumptions.model_parameters,
        assumptions.step_tokens,
        assumptions.learner_gpus,
        assumptions.gpu_peak_flops,
        assumptions.mfu,
    )
    out = []
    for actors in assumptions.actors:
        aggregate = aggregate_rate_for(actors, aggregate_fetch)
        put_s, fetch_s, verify_s = size / put_rate, actors * size / aggregate, size / sha256_rate
        total = put_s + fetch_s + verify_s
        measured_s = size / broadcast_rate_for(actors, broadcast_rates) + verify_s if broadcast_rates else 0.0
        out.append(
            SyncProjection(
                actors=actors,
                put_s=put_s,
                fetch_s=fetch_s,
                verify_s=verify_s,
                total_s=total,
                aggregate_fetch_bytes_per_s=aggregate,
                broadcast_s=size / assumptions.broadcast_bytes_per_s,
                learner_step_s=step_s,
                sync_over_step=total / step_s,
                broadcast_measured_s=measured_s,
                broadcast_over_step=measured_s / step_s,
            )
        )
    return out


def store_limit_mib(object_bytes: int, limits: StreamLimits) -> int:
    """A file-store limit that holds the streams' reserved caps and one object with room to spare."""
    reserved = limits.nodes_max_bytes + limits.trees_max_bytes + limits.dead_letter_max_bytes
    return (reserved + 2 * object_bytes) // MIB + 256


@dataclass(frozen=True)
class FetchRound:
    fetchers: int
    aggregate_bytes_per_s: float
    per_fetcher_bytes_per_s: list[float]
    verified: bool


@dataclass(frozen=True)
class BroadcastRound:
    receivers: int
    # From rank 0's first byte to the last receiver holding the whole version.
    seconds: float
    bytes_per_s: float
    verified: bool


@dataclass(frozen=True)
class SizeResult:
    object_mib: int
    chunks: int
    put_bytes_per_s: float
    fetch: list[FetchRound] = field(default_factory=list)
    broadcast: list[BroadcastRound] = field(default_factory=list)


@dataclass(frozen=True)
class TransportComparison:
    object_mib: int
    actors: int
    object_store_s: float
    broadcast_s: float
    speedup: float


def compare_transports(size: SizeResult) -> list[TransportComparison]:
    """Per actor count measured both ways: the object store's put plus its fetch round's span
    (c x S / aggregate) against the broadcast's time, and how many times faster the broadcast is."""
    object_bytes = size.object_mib * MIB
    spans = {r.fetchers: r.fetchers * object_bytes / r.aggregate_bytes_per_s for r in size.fetch}
    put_s = object_bytes / size.put_bytes_per_s
    out = []
    for round_ in size.broadcast:
        if round_.receivers in spans:
            store_s = put_s + spans[round_.receivers]
            out.append(
                TransportComparison(
                    size.object_mib, round_.receivers, store_s, round_.seconds, store_s / round_.seconds
                )
            )
    return out


# Shell: the server, the learner's put, the actor processes' fetches. ----------------------


def _fetcher_process(bus: BusConfig, run: RunConfig, name: str, sha256: str, start: Any, out: Any) -> None:
    async def fetch() -> tuple[float, float, bool]:
        actor = await BusClient.connect("actor", bus, run)
        try:
            start.wait(timeout=300)
            began = time.perf_counter()
            blob = await asyncio.wait_for(actor.get_object(name), FETCH_TIMEOUT_S)
            ended = time.perf_counter()
        finally:
            await actor.close()
        return began, ended, hashlib.sha256(blob).hexdigest() == sha256

    configure_logging("bench", None, "warning", json_file=False)
    out.put(asyncio.run(fetch()))


def fetch_round(bus: BusConfig, run: RunConfig, name: str, size: int, sha256: str, fetchers: int) -> FetchRound:
    """``fetchers`` actor processes read the object at once; perf_counter is one clock machine-wide."""
    spans = results_of_processes(_fetcher_process, [(bus, run, name, sha256)] * fetchers, "fetcher")
    first, last = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    return FetchRound(
        fetchers=fetchers,
        aggregate_bytes_per_s=fetchers * size / (last - first),
        per_fetcher_bytes_per_s=[size / (e - s) for s, e, _ in spans],
        verified=all(ok for _, _, ok in spans),
    )


async def _put(bus: BusConfig, run: RunConfig, name: str, data: bytes) -> float:
    async with await BusClient.connect("learner", bus, run) as learner:
        began = time.perf_counter()
        await learner.put_object(name, data)
        return len(data) / (time.perf_counter() - began)


async def _provision(bus: BusConfig, run: RunConfig, limits: StreamLimits) -> None:
    async with await BusClient.connect("admin", bus, run) as admin:
        await provision_run(admin.js, Subjects(run.run_id), limits)


def measure_size(size_mib: int, fetcher_counts: list[int]) -> SizeResult:
    """A fresh server for one object size, sized so that the object fits its store limit."""
    size = size_mib * MIB
    limits = StreamLimits()
    with tempfile.TemporaryDirectory(prefix="weight-sync-") as tmp:
        config = BusServerConfig(
            run=RunConfig(run_id=RUN_ID, run_dir=tmp),
            log=LogConfig(level="warning"),
            port=0,
            monitor_port=0,
            max_store_mib=store_limit_mib(size, limits),
        )
        with BusServer(config) as server:
            run = RunConfig(run_id=RUN_ID, run_dir=tmp)
            bus = BusConfig(servers=[server.url])
            asyncio.run(_provision(bus, run, config.stream_limits))
            data = os.urandom(size)
            sha256 = hashlib.sha256(data).hexdigest()
            name = weights_object_name(1)
            put_rate = asyncio.run(_put(bus, run, name, data))
            del data
            rounds = [fetch_round(bus, run, name, size, sha256, c) for c in fetcher_counts]
    return SizeResult(
        object_mib=size_mib, chunks=-(-size // OBJECT_CHUNK_BYTES), put_bytes_per_s=put_rate, fetch=rounds
    )


def _broadcast_process(
    rank: int, size: int, port: int, object_bytes: int, bucket_bytes: int, start: Any, out: Any
) -> None:
    """Rank 0 hosts the store and sends one version of random bytes; the others receive and check it."""
    import torch.distributed as dist

    configure_logging("bench", None, "warning", json_file=False)
    timeout = timedelta(seconds=FETCH_TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, wait_for_workers=False, timeout=timeout)
    group = make_process_group(store, "bench/", rank, size, "gloo", FETCH_TIMEOUT_S)
    device = device_for("gloo")
    if rank == 0:
        blob = os.urandom(object_bytes)
        announcement = weights_announcement(RUN_ID, 1, blob, time.time())
        start.wait(timeout=300)
        began = time.perf_counter()
        send_frame(group, encode_header(FrameKind.VERSION, announcement), blob, bucket_bytes, device)
        out.put((rank, began, time.perf_counter(), True))
        return
    start.wait(timeout=300)
    header = decode_header(receive_header(group, device), RUN_ID)
    assert header.announcement is not None
    received = receive_blob(group, header.announcement.num_bytes, bucket_bytes, device)
    ended = time.perf_counter()
    out.put((rank, ended, ended, hashlib.sha256(received).hexdigest() == header.announcement.sha256))


def broadcast_round(object_bytes: int, receivers: int, bucket_bytes: int) -> BroadcastRound:
    port = free_port()
    args = [(rank, receivers + 1, port, object_bytes, bucket_bytes) for rank in range(receivers + 1)]
    results = results_of_processes(_broadcast_process, args, "broadcast", join_timeout_s=120.0)
    began = next(b for rank, b, _, _ in results if rank == 0)
    last = max(e for rank, _, e, _ in results if rank > 0)
    seconds = last - began
    return BroadcastRound(
        receivers=receivers,
        seconds=seconds,
        bytes_per_s=object_bytes / seconds,
        verified=all(ok for rank, _, _, ok in results if rank > 0),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256_rate(size_mib: int = 256) -> float:
    data = os.urandom(size_mib * MIB)
    began = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / (time.perf_counter() - began)


def markdown(results: dict[str, Any]) -> str:
    a, machine = results["assumptions"], results["machine"]
    lines = [
        "# Weight sync: the NATS object store and the broadcast",
        "",
        "## Object store",
        "",
        f"Measured on {machine['cpus']} cores, load average {machine['load_average_1m_before']:.1f}"
        f" before and {machine['load_average_1m_after']:.1f} after (other work shared the cores);"
        f" {OBJECT_CHUNK_BYTES // MIB} MiB chunks as the learner publishes; GB = 10^9 bytes.",
        "",
        "| object | put GB/s | fetchers | aggregate fetch GB/s | per fetcher GB/s | sha256 ok |",
        "|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        for i, r in enumerate(size["fetch"]):
            put = f"{size['put_bytes_per_s'] / GB:.3f}" if i == 0 else ""
            label = f"{size['object_mib']} MiB" if i == 0 else ""
            each = ", ".join(f"{x / GB:.3f}" for x in r["per_fetcher_bytes_per_s"])
            aggregate = r["aggregate_bytes_per_s"] / GB
            lines.append(f"| {label} | {put} | {r['fetchers']} | {aggregate:.3f} | {each} | {r['verified']} |")
    lines += [
        "",
        f"sha256 (what each actor checks before loading): {results['sha256_bytes_per_s'] / GB:.2f} GB/s.",
        "",
    ]
    if results.get("comparison"):
        lines += [
            "## Broadcast (`weights.transport: broadcast`), gloo over loopback",
            "",
            f"Rank 0 sends one version (header, then {results['bucket_bytes'] // MIB} MiB buckets) to every"
            " receiver process; time from its start to the last receiver holding the whole version, sha256"
            " checked. Object store: put + that fetch round's span, same size and actor count. The receivers"
            " share this machine's cores with the sender: a lower bound for NCCL between GPUs.",
            "",
            "| object | actors | broadcast s | broadcast GB/s per actor | sha256 ok | object store s | speedup |",
            "|---|---|---|---|---|---|---|",
        ]
        by_key = {(c["object_mib"], c["actors"]): c for c in results["comparison"]}
        for size in results["sizes"]:
            for r in size["broadcast"]:
                c = by_key.get((size["object_mib"], r["receivers"]))
                store = f"{c['object_store_s']:.1f} | {c['speedup']:.1f}x" if c else "- | -"
                lines.append(
                    f"| {size['object_mib']} MiB | {r['receivers']} | {r['seconds']:.2f} |"
                    f" {r['bytes_per_s'] / GB:.3f} | {r['verified']} | {store} |"
                )
        lines.append("")
    lines += [
        f"## Projection: {a['model_bytes'] / GB:.0f} GB per version"
        f" ({a['model_parameters'] / 1e9:.0f} B parameters, bf16)",
        "",
        f"From the {results['projection_from_mib']} MiB measurements. t_sync = put + N x S / aggregate fetch rate"
        " (the best measured with at most N fetchers; flat beyond) + sha256. Learner step: 6 x parameters x"
        f" {a['step_tokens']:,.0f} tokens on {a['learner_gpus']} GPUs of {a['gpu_peak_flops'] / 1e12:.0f} TFLOP/s"
        f" at {a['mfu']:.0%} utilisation. Broadcast measured: S / the rate measured with the most receivers"
        " not above N (flat beyond) + sha256. Broadcast assumed:"
        f" {a['broadcast_bytes_per_s'] / GB:.0f} GB/s per link.",
        "",
        "| actors | put s | fetch s | verify s | sync per version s | learner step s | sync / step"
        " | broadcast measured s | broadcast / step | broadcast assumed s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["projection"]:
        lines.append(
            f"| {p['actors']} | {p['put_s']:.0f} | {p['fetch_s']:.0f} | {p['verify_s']:.0f} | {p['total_s']:.0f} |"
            f" {p['learner_step_s']:.1f} | {p['sync_over_step']:.1f}x | {p['broadcast_measured_s']:.0f} |"
            f" {p['broadcast_over_step']:.1f}x | {p['broadcast_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_weight_sync(
    sizes_mib: list[int],
    fetcher_counts: list[int],
    assumptions: SyncAssumptions,
    results_dir: Path = RESULTS_DIR,
    receiver_counts: list[int] | None = None,
    bucket_mib: int = 128,
) -> dict[str, Any]:
    """Both transports at every size: the object store (``fetcher_counts``), then the broadcast
    (``receiver_counts``, default the same counts; an empty list skips it)."""
    receivers = fetcher_counts if receiver_counts is None else receiver_counts
    if not sizes_mib or min(sizes_mib) < 1 or not fetcher_counts or min(fetcher_counts) < 1:
        raise ValueError("sizes and fetcher counts must be >= 1")
    if (receivers and min(receivers) < 1) or bucket_mib < 1:
        raise ValueError("receiver counts and the bucket size must be >= 1")
    configure_logging("bench", None, "warning", json_file=False)
    load_before = os.getloadavg()[0]
    sizes = []
    for size_mib in sizes_mib:
        measured = measure_size(size_mib, fetcher_counts)
        rounds = [broadcast_round(size_mib * MIB, c, bucket_mib * MIB) for c in receivers]
        sizes.append(replace(measured, broadcast=rounds))
        print(json.dumps(asdict(sizes[-1])), flush=True)
    hash_rate = sha256_rate(min(256, max(sizes_mib)))
    largest = max(sizes, key=lambda s: s.object_mib)
    projection = project_sync(
        assumptions,
        largest.put_bytes_per_s,
        {r.fetchers: r.aggregate_bytes_per_s for r in largest.fetch},
        hash_rate,
        {r.receivers: r.bytes_per_s for r in largest.broadcast},
    )
    results: dict[str, Any] = {
        "sizes": [asdict(s) for s in sizes],
        "comparison": [asdict(c) for size in sizes for c in compare_transports(size)],
        "bucket_bytes": bucket_mib * MIB,
        "sha256_bytes_per_s": hash_rate,
        "projection_from_mib": largest.object_mib,
        "assumptions": asdict(assumptions),
        "projection": [asdict(p) for p in projection],
        "chunk_bytes": OBJECT_CHUNK_BYTES,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
        },
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "weight_sync.json").write_text(json.dumps(results, indent=2))
    (results_dir / "weight_sync.md").write_text(markdown(results))
    return results
