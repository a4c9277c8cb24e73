"""TurnNodes through JetStream on a real nats-server: throughput and publish→ack latency.

    python -m bench.bus_throughput [--nodes 20000] [--rate 1000] [--seconds 5]

Nodes are production-sized (300 generated tokens with logprobs, 50 observation tokens).
Measured, each through the project's own launcher, permissions and BusClient:

- codec cost per node (encode, decode);
- max publish rate with publish_async pipelining, as the actor role: encode included, and
  with payloads encoded beforehand (the bus alone);
- publish→ack latency percentiles at a paced rate (default 1,000 nodes/s);
- consume rate of the allocator's PullConsumer (fetch, decode, handler, ack).

Results are printed and written to bench/results/bus_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bus.client import BusClient, Delivery
from bus.config import BusServerConfig
from bus.provision import provision_run
from bus.server import BusServer
from protocol import Subjects, TaskSpec, TurnNode, decode, encode
from tracerl.config import BusConfig, LogConfig, RunConfig
from tracerl.logs import configure_logging

RESULTS = Path(__file__).parent / "results" / "bus_throughput.json"


def make_node(run_id: str, index: int) -> TurnNode:
    return TurnNode(
        run_id=run_id, tree_id=f"tree-{index // 16}", node_id=f"node-{index}",
        parent_id=None if index % 4 == 0 else f"node-{index - 1}", work_id=f"work-{index // 4}",
        actor_id="actor-0", task=TaskSpec(env="search_qa", task_id=f"q{index % 97}", params={"hops": 2}),
        depth=index % 4 + 1, policy_version=3, prompt_token_ids=[],
        action_token_ids=[(index * 31 + k) % 32000 for k in range(300)],
        action_logprobs=[-0.001 * ((index + k) % 997) for k in range(300)],
        observation_token_ids=[(index * 17 + k) % 32000 for k in range(50)],
        action_text="<think> the film was directed by someone </think> <search> director of the film </search>",
        observation_text="<information> Doc 1: ... Doc 2: ... </information>",
        env_snapshot=b"\x01" * 96, env_score=0.0, done=index % 4 == 3,
        reward=1.0 if index % 4 == 3 else None, created_at=1_800_000_000.0 + index,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


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


async def max_publish_rate(actor: BusClient, subjects: Subjects, nodes: list[TurnNode]) -> float:
    started = time.perf_counter()
    await actor.publish_batch((subjects.nodes, n) for n in nodes)
    return len(nodes) / (time.perf_counter() - started)


async def max_transport_rate(actor: BusClient, subjects: Subjects, nodes: list[TurnNode]) -> float:
    """The same, with payloads encoded beforehand: what the bus alone sustains."""
    payloads = [encode(n) for n in nodes]
    started = time.perf_counter()
    futures = [await actor.js.publish_async(subjects.nodes, p) for p in payloads]
    await asyncio.gather(*futures)
    return len(nodes) / (time.perf_counter() - started)


async def paced_latency(actor: BusClient, subjects: Subjects, nodes: list[TurnNode], rate: float) -> dict:
    latencies: list[float] = []
    futures = []
    started = time.perf_counter()
    for i, node in enumerate(nodes):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        future = await actor.js.publish_async(subjects.nodes, encode(node))
        future.add_done_callback(lambda _f, sent=sent: latencies.append(time.perf_counter() - sent))
        futures.append(future)
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    ms = [1000 * x for x in latencies]
    return {
        "target_rate": rate,
        "achieved_rate": len(nodes) / elapsed,
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
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

    nodes = [make_node(run.run_id, i) for i in range(args.nodes)]
    results: dict = {"codec": codec_cost(nodes[:2000])}
    actor = await BusClient.connect("actor", bus, run)
    allocator = await BusClient.connect("allocator", bus, run)
    try:
        await max_publish_rate(actor, subjects, nodes[:1000])  # warm-up
        results["publish_async_nodes_per_s"] = await max_publish_rate(actor, subjects, nodes)
        results["publish_async_preencoded_nodes_per_s"] = await max_transport_rate(actor, subjects, nodes)
        paced = nodes[: int(args.rate * args.seconds)]
        results["paced"] = await paced_latency(actor, subjects, paced, args.rate)
        total = 1000 + 2 * len(nodes) + len(paced)
        results["consume_nodes_per_s"] = await consume_rate(allocator, subjects, total)
        results["permission_violations"] = actor.counters.get("permission_violations", 0)
    finally:
        await actor.close()
        await allocator.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    configure_logging("bench", None, "warning", json_file=False)
    with tempfile.TemporaryDirectory(prefix="bus-bench-") as tmp:
        config = BusServerConfig(
            run=RunConfig(run_id="bench", run_dir=tmp), log=LogConfig(level="warning"), port=0, monitor_port=0
        )
        with BusServer(config) as server:
            results = asyncio.run(run_bench(server, args))
    results["targets"] = {"publish_async_nodes_per_s": 20_000, "paced_p99_ms": 10.0}
    results["meets_targets"] = (
        results["publish_async_nodes_per_s"] >= 20_000 and results["paced"]["p99_ms"] < 10.0
    )
    results["machine"] = {
        "python": platform.python_version(),
        "processor": platform.machine(),
        "load_average_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    results["args"] = vars(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
