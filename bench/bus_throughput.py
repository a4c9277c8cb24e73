"""TurnNodes through JetStream on a real nats-server: throughput and publish→ack latency.

    python -m bench.bus_throughput [--nodes 20000] [--rate 1000] [--seconds 5] [--publishers 2] [--tls-comparison-only]

Nodes are production-sized (300 generated tokens with logprobs, 50 observation tokens).
Measured, each through the project's own launcher, permissions and BusClient:

- codec cost per node (encode, decode);
- max publish rate of BusClient.publish_batch as the actor role, every node with its
  Nats-Msg-Id (duplicate detection on) and acked by the stream: encode included, and with
  payloads encoded beforehand (the bus alone);
- publish→ack latency percentiles at a paced rate (default 1,000 nodes/s), encode included;
- the aggregate publish rate of several actor processes at once (default 2), as in a run
  with several actors (the 20,000 nodes/s target is compared with one publisher's rate);
- consume rate of the allocator's PullConsumer (fetch, decode, handler, ack);
- plain against TLS (``tls_comparison``): one pass each of publish and consume, on a bus
  whose actor has a credential of its own either way, so only the encryption differs.
  ``--tls-comparison-only`` runs just that and merges it into the existing results file.

Rates are measured after a warm-up of 10,000 nodes, with the nodes built beforehand and kept
out of the garbage collector (``build_nodes``). The machine's load average is recorded
before and after: on 2 cores anything else running (a test suite) costs this bench directly.

Results are printed and written to bench/results/bus_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import results_of_processes
from bus.client import BusClient, Delivery
from bus.config import BusServerConfig
from bus.provision import provision_run
from bus.server import BusServer
from protocol import Subjects, TaskSpec, TurnNode, decode, encode
from tracerl.config import BusConfig, LogConfig, RunConfig
from tracerl.logs import configure_logging
from tracerl.metrics import percentile

RESULTS = Path(__file__).parent / "results" / "bus_throughput.json"
ACTOR_ID = "actor-0"
TARGET_NODES_PER_S = 20_000
TARGET_P99_MS = 10.0
# A fresh nats-server spends about twice the CPU per message on its first ~10k messages
# (measured); a run's bus is long past that, so the figures start after it.
WARM_UP = 10_000
AGGREGATE_WARM_UP = 200  # per aggregate publisher, for its own connection: the server is warm by then


def make_node(run_id: str, index: int) -> TurnNode:
    return TurnNode(
        run_id=run_id,
        tree_id=f"tree-{index // 16}",
        node_id=f"node-{index}",
        parent_id=None if index % 4 == 0 else f"node-{index - 1}",
        work_id=f"work-{index // 4}",
        actor_id=ACTOR_ID,
        task=TaskSpec(env="search_qa", task_id=f"q{index % 97}", params={"hops": 2}),
        depth=index % 4 + 1,
        policy_version=3,
        prompt_token_ids=[],
        action_token_ids=[(index * 31 + k) % 32000 for k in range(300)],
        behaviour_logprobs=[-((index + k) % 997) / 1024 for k in range(300)],
        observation_token_ids=[(index * 17 + k) % 32000 for k in range(50)],
        action_text="<think> the film was directed by someone </think> <search> director of the film </search>",
        observation_text="<information> Doc 1: ... Doc 2: ... </information>",
        env_snapshot=b"\x01" * 96,
        env_score=0.0,
        done=index % 4 == 3,
        reward=1.0 if index % 4 == 3 else None,
        created_at=1_800_000_000.0 + index,
    )


def codec_cost(nodes: list[TurnNode]) -> dict[str, float]:
    started = time.perf_counter()
    payloads = [encode(n) for n in nodes]
    encoded = time.perf_counter() - started
    started = time.perf_counter()
    for p in payloads:
        decode(p, TurnNode)
    decoded = time.perf_counter() - started
    return {
        "node_bytes": statistics.mean(len(p) for p in payloads),
        "encode_us": 1e6 * encoded / len(nodes),
        "decode_us": 1e6 * decoded / len(nodes),
    }


def msg_ids(phase: str, nodes: list[TurnNode]) -> list[str]:
    """Each phase re-sends the same nodes; its own ids keep the stream from dropping them as duplicates."""
    return [f"{phase}:{n.node_id}" for n in nodes]


async def max_publish_rate(actor: BusClient, subjects: Subjects, nodes: list[TurnNode], phase: str) -> float:
    started = time.perf_counter()
    await actor.publish_batch(((subjects.nodes_from(ACTOR_ID), n) for n in nodes), msg_ids=msg_ids(phase, nodes))
    return len(nodes) / (time.perf_counter() - started)


async def max_transport_rate(actor: BusClient, subjects: Subjects, nodes: list[TurnNode]) -> float:
    """The same, with payloads encoded beforehand: what the bus alone sustains."""
    messages = [
        (subjects.nodes_from(ACTOR_ID), encode(n), i) for n, i in zip(nodes, msg_ids("pre", nodes), strict=True)
    ]
    started = time.perf_counter()
    await actor.publish_encoded(messages)
    return len(nodes) / (time.perf_counter() - started)


async def paced_latency(actor: BusClient, subjects: Subjects, nodes: list[TurnNode], rate: float) -> dict:
    latencies: list[float] = []

    async def publish_one(node: TurnNode, msg_id: str) -> None:
        sent = time.perf_counter()
        await actor.publish_batch([(subjects.nodes_from(ACTOR_ID), node)], msg_ids=[msg_id])
        latencies.append(time.perf_counter() - sent)

    tasks = []
    started = time.perf_counter()
    for i, (node, msg_id) in enumerate(zip(nodes, msg_ids("paced", nodes), strict=True)):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(publish_one(node, msg_id)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    ms = [1000 * x for x in latencies]
    return {
        "target_rate": rate,
        "achieved_rate": len(nodes) / elapsed,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def build_nodes(run_id: str, count: int) -> list[TurnNode]:
    """The nodes to send, made before any clock starts and kept out of the garbage collector.

    An actor holds a handful of nodes; this bench holds tens of thousands (millions of list
    slots), and a full collection over them took 0.2 s, which is the bench's cost, not the
    bus's. Frozen, they are skipped by every collection.
    """
    nodes = [make_node(run_id, i) for i in range(count)]
    gc.freeze()
    return nodes


def publisher_process(bus: BusConfig, run: RunConfig, worker: int, count: int, start: Any, out: Any) -> None:
    """One actor process of several: publish ``count`` nodes at full speed, report when it ran."""
    subjects = Subjects(run.run_id)
    nodes = build_nodes(run.run_id, count)

    async def publish() -> tuple[float, float]:
        actor = await BusClient.connect("actor", bus, run)
        try:
            await max_publish_rate(actor, subjects, nodes[:AGGREGATE_WARM_UP], f"warm-up-{worker}")
            start.wait(timeout=300)  # every publisher connected and warm: go together
            started = time.perf_counter()
            await max_publish_rate(actor, subjects, nodes, f"aggregate-{worker}")
            return started, time.perf_counter()
        finally:
            await actor.close()

    configure_logging("bench", None, "warning", json_file=False)
    out.put(asyncio.run(publish()))


def aggregate_rate(bus: BusConfig, run: RunConfig, publishers: int, count: int) -> dict:
    """Several publisher processes at once, as several actors in a run: the bus's total rate.

    perf_counter is CLOCK_MONOTONIC, one clock for every process on the machine.
    """
    spans = results_of_processes(
        publisher_process, [(bus, run, w, count) for w in range(publishers)], "publisher", join_timeout_s=30.0
    )
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return {
        "publishers": publishers,
        "nodes_per_s": publishers * count / (last - first),
        "per_publisher_nodes_per_s": [count / (e - s) for s, e in spans],
    }


async def consume_rate(allocator: BusClient, subjects: Subjects, expected: int) -> float:
    consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
    handled = 0

    async def count(node: TurnNode, delivery: Delivery) -> None:
        nonlocal handled
        handled += 1

    started = time.perf_counter()
    while handled < expected:
        await consumer.process_batch(count, batch=512, timeout=1.0)
    elapsed = time.perf_counter() - started
    await consumer.close()
    return handled / elapsed


async def run_bench(server: BusServer, args: argparse.Namespace) -> dict:
    run = RunConfig(run_id=server.config.run.run_id, run_dir=server.config.run.run_dir)
    bus = BusConfig(servers=[server.url])
    subjects = Subjects(run.run_id)
    admin = await BusClient.connect("admin", bus, run)
    await provision_run(admin.js, subjects, server.config.streams)
    await admin.close()

    nodes = build_nodes(run.run_id, args.nodes)
    results: dict = {"codec": codec_cost(nodes[:2000])}
    actor = await BusClient.connect("actor", bus, run)
    allocator = await BusClient.connect("allocator", bus, run)
    try:
        await max_publish_rate(actor, subjects, nodes[:WARM_UP], "warm-up")
        results["publish_nodes_per_s"] = await max_publish_rate(actor, subjects, nodes, "publish")
        results["publish_preencoded_nodes_per_s"] = await max_transport_rate(actor, subjects, nodes)
        paced = nodes[: int(args.rate * args.seconds)]
        results["paced"] = await paced_latency(actor, subjects, paced, args.rate)
        total = len(nodes[:WARM_UP]) + 2 * len(nodes) + len(paced)
        if args.publishers > 1:
            results["aggregate"] = await asyncio.to_thread(aggregate_rate, bus, run, args.publishers, len(nodes))
            total += args.publishers * (AGGREGATE_WARM_UP + len(nodes))
        results["consume_nodes_per_s"] = await consume_rate(allocator, subjects, total)
        results["permission_violations"] = actor.counters.get("permission_violations", 0)
    finally:
        await actor.close()
        await allocator.close()
    return results


def _comparison_config(run_dir: str, tls: bool) -> BusServerConfig:
    return BusServerConfig(
        run=RunConfig(run_id="bench", run_dir=run_dir),
        log=LogConfig(level="warning"),
        port=0,
        monitor_port=0,
        tls=tls,
        shared_actor_credential=False,
        actors=[ACTOR_ID],
    )


async def publish_consume_pass(server: BusServer, nodes: list[TurnNode]) -> dict:
    """Warm up, publish ``nodes`` at full speed as the actor, then consume all as the allocator."""
    run = RunConfig(run_id=server.config.run.run_id, run_dir=server.config.run.run_dir)
    bus = BusConfig(servers=[server.url])
    subjects = Subjects(run.run_id)
    async with await BusClient.connect("admin", bus, run) as admin:
        await provision_run(admin.js, subjects, server.config.streams)
    actor = await BusClient.connect("actor", bus, run, actor_id=ACTOR_ID)
    allocator = await BusClient.connect("allocator", bus, run)
    try:
        await max_publish_rate(actor, subjects, nodes[:WARM_UP], "warm-up")
        published = await max_publish_rate(actor, subjects, nodes, "publish")
        consumed = await consume_rate(allocator, subjects, len(nodes[:WARM_UP]) + len(nodes))
        return {
            "publish_nodes_per_s": published,
            "consume_nodes_per_s": consumed,
            "permission_violations": actor.counters.get("permission_violations", 0),
        }
    finally:
        await actor.close()
        await allocator.close()


def tls_comparison(nodes: list[TurnNode]) -> dict:
    """One pass on a plain bus, then one on a TLS bus, each a fresh nats-server; the ratios are TLS / plain."""
    passes: dict[str, dict] = {}
    for name, tls in (("plain", False), ("tls", True)):
        load = os.getloadavg()[0]
        with (
            tempfile.TemporaryDirectory(prefix=f"bus-bench-{name}-") as tmp,
            BusServer(_comparison_config(tmp, tls)) as server,
        ):
            assert server.url.startswith("tls://" if tls else "nats://")
            passes[name] = {**asyncio.run(publish_consume_pass(server, nodes)), "load_average_1m_before": load}
    return {
        **passes,
        "nodes": len(nodes),
        "publish_ratio_tls_over_plain": passes["tls"]["publish_nodes_per_s"] / passes["plain"]["publish_nodes_per_s"],
        "consume_ratio_tls_over_plain": passes["tls"]["consume_nodes_per_s"] / passes["plain"]["consume_nodes_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publishers", type=int, default=2, help="processes for the aggregate rate (<2: skip)")
    parser.add_argument(
        "--tls-comparison-only",
        action="store_true",
        help="run only the plain-vs-TLS passes and merge them into the existing results file",
    )
    args = parser.parse_args()
    configure_logging("bench", None, "warning", json_file=False)
    if args.tls_comparison_only:
        comparison = tls_comparison(build_nodes("bench", args.nodes))
        comparison["machine"] = {"cpus": os.cpu_count(), "load_average_1m_after": os.getloadavg()[0]}
        recorded = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({**recorded, "tls_comparison": comparison}, indent=2))
        print(json.dumps(comparison, indent=2))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bus-bench-") as tmp:
        config = BusServerConfig(
            run=RunConfig(run_id="bench", run_dir=tmp), log=LogConfig(level="warning"), port=0, monitor_port=0
        )
        with BusServer(config) as server:
            results = asyncio.run(run_bench(server, args))
    results["tls_comparison"] = tls_comparison(build_nodes("bench", args.nodes))
    results["targets"] = {
        "nodes_per_s": TARGET_NODES_PER_S,
        "paced_p99_ms": TARGET_P99_MS,
        "compared": "publish_nodes_per_s: one publisher process, encode included (aggregate is reported, not compared)",
    }
    results["meets_targets"] = (
        results["publish_nodes_per_s"] >= TARGET_NODES_PER_S and results["paced"]["p99_ms"] < TARGET_P99_MS
    )
    results["machine"] = {
        "python": platform.python_version(),
        "processor": platform.machine(),
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    results["args"] = vars(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
