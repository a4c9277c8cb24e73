"""Two real `tracerl allocator` shards against a real nats-server, fed by model-free actors
(the real actor service over bench.scale's simulated engine) and a learner that trains a
step when every shard's part of it has come. Every tree is built by the one shard that
owns its prompt, every node reaches only its own tree's shard, and, per shard, every node
the actors published ends in exactly one CompletedTree, in the shard's drop record, or in
an open tree at its clean stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.config import ActorConfig, EngineSettings
from actors.service import ActorService
from allocator.config import AllocatorConfig
from allocator.shard import ShardConfig, prompt_key, shard_of_prompt
from bench.chaos import read_drop_records, read_held, reconcile, wait_consumer_drained
from bench.scale import SimulatedEngine, make_simulated_model_dir, simulated_weights
from bus.streams import read_stream
from learner.batching import step_is_whole
from learner.weights_retention import weights_announcement
from protocol import CompletedTree, ProtocolError, TurnNode, decode, replace
from tests.processes import kill_groups, small_allocator_config, start_role, written
from tracerl.config import LogConfig, RunConfig

pytestmark = [pytest.mark.nats]

SHARDS = 2
ACTORS = 3
STEPS = 4


def _shard_config(bus_run, run_dir: Path, shard: ShardConfig) -> AllocatorConfig:
    return small_allocator_config(bus_run, run_dir, batch_prompts=4, step_budget_turns=48, shard=shard)


class Learner:
    """Takes the trees of both shards and trains (announces a version) per whole step."""

    def __init__(self, bus_run) -> None:
        self.bus_run = bus_run
        self.version = 0
        self.by_step: dict[int, list[CompletedTree]] = {}
        self.trained: dict[int, list[CompletedTree]] = {}

    async def open(self) -> None:
        s = self.bus_run.subjects
        self.bus = await self.bus_run.connect("learner")
        self.trees = await self.bus.js.pull_subscribe_bind(s.learner_consumer, stream=s.trees_stream)
        await self.publish()

    async def publish(self) -> None:
        blob = simulated_weights(self.version)
        announcement = weights_announcement(self.bus_run.run.run_id, self.version, blob, time.time())
        await self.bus.put_object(announcement.object_name, blob)
        await self.bus.announce_weights(announcement)

    async def train(self) -> None:
        try:
            msgs = await self.trees.fetch(64, timeout=0.2)
        except Exception:  # noqa: BLE001 - no trees yet
            return
        for msg in msgs:
            tree = decode(msg.data, CompletedTree)
            step = self.by_step.setdefault(tree.allocator_step, [])
            step.append(tree)
            if tree.allocator_step not in self.trained and step_is_whole(step):
                self.trained[tree.allocator_step] = list(step)
                self.version += 1
                await self.publish()
            await msg.ack()


async def _actors(bus_run, run_dir: Path, model_dir: Path) -> list[tuple[ActorService, object]]:
    from transformers import AutoTokenizer

    credentials = Path(bus_run.run.run_dir) / "credentials" / "actor.json"
    config = ActorConfig(
        run=RunConfig(run_id=bus_run.run.run_id, run_dir=str(run_dir)),
        bus=replace(bus_run.bus, credentials=str(credentials)),
        log=LogConfig(level="warning"),
        model_dir=str(model_dir),
        max_inflight_items=4,
        heartbeat_interval_s=0.5,
        pull_timeout_s=0.3,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for index in range(ACTORS):
        actor_id = f"sim-{index}"
        client = await bus_run.connect("actor", actor_id=actor_id)
        engine = SimulatedEngine(tokenizer, EngineSettings(), 0.05, 16, 0.4, seed=index)
        own = replace(config, actor_id=actor_id)
        out.append((ActorService(own, engine, client, actor_id), client))  # type: ignore[arg-type]
    return out


async def _stream(bus_run, subject: str, expected: type) -> list[tuple[str, object]]:
    async with await bus_run.connect("admin") as admin:
        stream = bus_run.subjects.nodes_stream if expected is TurnNode else bus_run.subjects.trees_stream
        return [
            (subj, message)
            async for _, subj, message in read_stream(admin.js, stream, subject, expected, idle_timeout_s=2.0)
            if not isinstance(message, ProtocolError)
        ]


def _stop(process: subprocess.Popen, log_path: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError("allocator shard did not stop: " + log_path.read_text()[-3000:]) from None


@pytest.mark.timeout(300)
def test_two_allocator_shards_share_the_streams_without_losing_or_stealing_nodes(bus_run, tmp_path, random_model_dir):
    run_dir = tmp_path / "run"
    shards = [ShardConfig(index=index, count=SHARDS) for index in range(SHARDS)]
    written_configs = [written(_shard_config(bus_run, run_dir, shard), shard.role_name, tmp_path) for shard in shards]
    model_dir = make_simulated_model_dir(random_model_dir, tmp_path / "simulated-model")
    s = bus_run.subjects

    async def main() -> None:
        learner = Learner(bus_run)
        await learner.open()
        processes = [start_role("allocator", config_path, log_path) for config_path, log_path in written_configs]
        actors = await _actors(bus_run, run_dir, model_dir)
        serving = [asyncio.create_task(service.serve()) for service, _ in actors]
        logs = lambda: "\n".join(log.read_text()[-2000:] for _, log in written_configs)  # noqa: E731
        try:
            deadline = time.monotonic() + 180
            while len(learner.trained) < STEPS:
                assert time.monotonic() < deadline, (learner.trained.keys(), logs())
                assert all(p.poll() is None for p in processes), logs()
                await learner.train()
            for service, _ in actors:
                service.stop.set()
            assert await asyncio.gather(*serving) == [0] * ACTORS
            for _, client in actors:
                await client.close()
            for shard, process, (_, log_path) in zip(shards, processes, written_configs, strict=True):
                drained = await wait_consumer_drained(
                    Path(bus_run.run.run_dir),
                    s.run_id,
                    bus_run.bus.servers,
                    s.allocator_shard_consumer(shard.index),
                    30,
                )
                assert drained, log_path.read_text()[-3000:]
                _stop(process, log_path)
        finally:
            kill_groups(*processes)
            await learner.bus.close()
        # Each step the learner trained holds trees of both shards (prompts never run out here).
        for step, trees in learner.trained.items():
            assert {t.shard for t in trees} == set(range(SHARDS)), step

    asyncio.run(main())

    trees = [tree for _, tree in asyncio.run(_stream(bus_run, s.trees, CompletedTree))]
    assert len({t.tree_id for t in trees}) == len(trees), "a tree was emitted twice"
    for shard in shards:
        own = [t for t in trees if t.shard == shard.index]
        assert own, f"{shard.role_name} emitted no tree"
        # Built by the shard that owns its prompt, under that shard's ids.
        assert all(shard_of_prompt(prompt_key(t.task), SHARDS) == shard.index for t in own)
        assert all(t.tree_id.startswith(f"{shard.tree_prefix}s") for t in own)
        assert all(t.shard_count == SHARDS for t in own)
        # Each shard's step counts are its own trees.
        counts = Counter(t.allocator_step for t in own)
        assert all(t.step_tree_count == counts[t.allocator_step] for t in own)

        nodes = asyncio.run(_stream(bus_run, s.nodes_for_shard(shard.index), TurnNode))
        assert nodes, f"no node reached {shard.role_name}'s subjects"
        # Every node on this shard's subjects belongs to one of its trees: actors routed by WorkItem.shard.
        assert all(s.node_subject_parts(subject)[1] == shard.index for subject, _ in nodes)
        assert all(
            shard_of_prompt(prompt_key(node.task), SHARDS) == shard.index and node.tree_id.startswith(shard.tree_prefix)
            for _, node in nodes
        )
        drops = read_drop_records(run_dir, shard)
        # Nothing another shard owns came to this one.
        assert not [d for d in drops if d.reason in ("unknown_tree", "wrong_shard")], drops
        held, recorded = read_held(run_dir, shard)
        assert recorded
        r = reconcile(
            [node.node_id for _, node in nodes],
            [(t.tree_id, [n.node_id for n in t.nodes]) for t in own],
            drops,
            held,
            [],
            0.0,
        )
        assert r.lost == [] and r.duplicated_in_trees == [] and r.phantom_in_trees == [], shard
        assert r.trees_emitted_twice == []
        assert r.nodes_in_trees > 0.5 * r.accepted_nodes
