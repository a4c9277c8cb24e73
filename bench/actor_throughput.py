"""Actor throughput: generated tokens/s fed over NATS vs the same engine driven in-process.

    python -m bench.actor_throughput [--items 32] [--samples 4] [--rounds 2] [--model-dir DIR]

One vLLM engine serves every phase so that the comparison isolates the bus: after a warm-up,
runs of the workload driven directly through the rollout loop alternate with runs of the same
workload published as work items to an ActorService on that engine over a real nats-server
(nodes published and acked, items acked after their nodes). The ratio is the mean over-NATS
tokens/s over the mean direct tokens/s; alternating brackets drift from other load on the machine.
Writes bench/results/actor_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from actors.config import ActorConfig, EngineSettings
from actors.engine import PolicyEngine
from actors.episode import EpisodeContext, collect_work_item
from protocol import Subjects, TurnNode, WorkItem
from protocol.messages import SamplingSpec
from tracerl.config import BusConfig, LogConfig, RunConfig

RESULTS = Path(__file__).resolve().parent / "results" / "actor_throughput.json"

# vLLM's spawned CPU worker re-imports this module; the environments package (bm25s -> numba ->
# llvmlite) must not be imported at its top level or the worker fails at start-up.


@dataclass(frozen=True)
class PhaseResult:
    name: str
    seconds: float
    tokens: int
    turns: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def workload(run_id: str, items: int, samples: int, max_tokens: int, prefix: str) -> list[WorkItem]:
    from environments import make_tasks

    tasks = make_tasks("multihop", "train", items, seed=7)
    return [
        WorkItem(
            shard=0,
            run_id=run_id,
            work_id=f"{prefix}{i}",
            tree_id=f"T{i}",
            kind="root",
            task=task,
            num_samples=samples,
            parent_id=None,
            prefix_depth=0,
            prefix_token_ids=[],
            env_snapshot=b"",
            sampling=SamplingSpec(temperature=1.0, max_tokens_per_turn=max_tokens, seed=i),
            max_turns=4,
            min_policy_version=0,
            issued_at=time.time(),
        )
        for i, task in enumerate(tasks)
    ]


async def run_direct(engine: PolicyEngine, items: list[WorkItem], concurrency: int, name: str) -> PhaseResult:
    from environments import make_env

    ctx = EpisodeContext(actor_id="bench", max_model_len=engine.settings.max_model_len, sampling="bench")
    slots = asyncio.Semaphore(concurrency)

    async def one(item: WorkItem) -> list[TurnNode]:
        async with slots:
            return await collect_work_item(engine, lambda: make_env(item.task.env), item, ctx)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(item) for item in items))
    seconds = time.perf_counter() - started
    nodes = [n for batch in results for n in batch]
    return PhaseResult(name, seconds, sum(len(n.action_token_ids) for n in nodes), len(nodes))


async def run_over_nats(
    engine: PolicyEngine,
    model_dir: str,
    items: list[WorkItem],
    concurrency: int,
    bus_run: tuple[RunConfig, BusConfig],
    name: str,
) -> PhaseResult:
    from actors.service import ActorService
    from bus.client import BusClient

    run, bus = bus_run
    subjects = Subjects(run.run_id)
    allocator = await BusClient.connect("allocator", bus, run)
    actor_bus = await BusClient.connect("actor", bus, run)
    config = ActorConfig(
        run=run,
        bus=bus,
        log=LogConfig(level="warning", json_file=False),
        model_dir=model_dir,
        actor_id="bench",
        max_inflight_items=concurrency,
        metrics_interval_s=5.0,
    )
    service = ActorService(config, engine, actor_bus, "bench")
    serving = asyncio.create_task(service.serve())
    consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
    nodes: dict[str, TurnNode] = {}
    expected_leaves = sum(item.num_samples for item in items)

    async def on_node(node: TurnNode, _delivery) -> None:
        nodes.setdefault(node.node_id, node)

    while not await allocator.get_actors():
        await asyncio.sleep(0.2)
    started = time.perf_counter()
    await allocator.publish_batch((subjects.work_shared, item) for item in items)
    by_work = {item.work_id: item for item in items}
    while sum(by_work[n.work_id].ends_chain(n) for n in nodes.values()) < expected_leaves:
        await consumer.process_batch(on_node, batch=500, timeout=0.2)
    seconds = time.perf_counter() - started
    service.stop.set()
    await serving
    await consumer.close()
    await allocator.close()
    await actor_bus.close()
    return PhaseResult(name, seconds, sum(len(n.action_token_ids) for n in nodes.values()), len(nodes))


def start_bus(workdir: Path):
    from bus.client import BusClient
    from bus.config import BusServerConfig, StreamLimits
    from bus.provision import provision_run
    from bus.server import BusServer

    run = RunConfig(run_id="bench", run_dir=str(workdir))
    server = BusServer(
        BusServerConfig(run=run, log=LogConfig(level="warning", json_file=False), port=0, monitor_port=0)
    ).start()
    bus = BusConfig(servers=[server.url], max_reconnect_attempts=3)

    async def provision() -> None:
        admin = await BusClient.connect("admin", bus, run)
        try:
            await provision_run(admin.js, Subjects(run.run_id), StreamLimits())
        finally:
            await admin.close()

    asyncio.run(provision())
    return server, run, bus


async def bench(
    model_dir: str,
    items: int,
    samples: int,
    max_tokens: int,
    concurrency: int,
    rounds: int,
    bus_run: tuple[RunConfig, BusConfig],
) -> dict:
    engine = await PolicyEngine.start(model_dir, EngineSettings(max_model_len=1024))
    try:
        run_id = bus_run[0].run_id
        await run_direct(
            engine, workload(run_id, max(4, items // 4), samples, max_tokens, "warm"), concurrency, "warmup"
        )
        phases: list[PhaseResult] = []
        for repeat in range(rounds):
            phases.append(
                await run_direct(
                    engine, workload(run_id, items, samples, max_tokens, f"d{repeat}-"), concurrency, f"direct_{repeat}"
                )
            )
            phases.append(
                await run_over_nats(
                    engine,
                    model_dir,
                    workload(run_id, items, samples, max_tokens, f"n{repeat}-"),
                    concurrency,
                    bus_run,
                    f"over_nats_{repeat}",
                )
            )
        phases.append(
            await run_direct(
                engine, workload(run_id, items, samples, max_tokens, f"d{rounds}-"), concurrency, f"direct_{rounds}"
            )
        )
    finally:
        engine.shutdown()
    direct = statistics.mean(p.tokens_per_s for p in phases if p.name.startswith("direct"))
    over_nats = statistics.mean(p.tokens_per_s for p in phases if p.name.startswith("over_nats"))
    return {
        "model_dir": model_dir,
        "items": items,
        "samples_per_item": samples,
        "max_tokens_per_turn": max_tokens,
        "concurrent_items": concurrency,
        "rounds": rounds,
        "phases": [
            {
                "name": p.name,
                "seconds": round(p.seconds, 3),
                "tokens": p.tokens,
                "turns": p.turns,
                "tokens_per_s": round(p.tokens_per_s, 1),
            }
            for p in phases
        ],
        "direct_tokens_per_s": round(direct, 1),
        "over_nats_tokens_per_s": round(over_nats, 1),
        "ratio_nats_to_direct": round(over_nats / direct, 3),
        "target_ratio": 0.95,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.actor_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16, help="work items in flight at once")
    parser.add_argument("--rounds", type=int, default=2, help="over-NATS runs, each between two direct runs")
    parser.add_argument("--model-dir", default="", help="HF model dir; default: the cached random test model")
    args = parser.parse_args(argv)
    if args.model_dir:
        model_dir = args.model_dir
    else:
        from modelkit.build import build_random_model

        model_dir = str(build_random_model())
    with tempfile.TemporaryDirectory(prefix="actor-bench-") as workdir:
        server, run, bus = start_bus(Path(workdir))
        try:
            result = asyncio.run(
                bench(model_dir, args.items, args.samples, args.max_tokens, args.concurrency, args.rounds, (run, bus))
            )
        finally:
            server.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for phase in result["phases"]:
        print(
            f"{phase['name']:>10}: {phase['tokens']:6d} tokens in {phase['seconds']:7.2f} s"
            f" = {phase['tokens_per_s']:8.1f} tokens/s"
        )
    print(f"over NATS / direct = {result['ratio_nats_to_direct']:.3f} (target >= {result['target_ratio']})")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
