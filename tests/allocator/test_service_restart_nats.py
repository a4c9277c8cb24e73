"""A real `tracerl allocator` process against a real nats-server, with simulated actors and
learner. SIGKILLed mid-run, it is replaced by a new one that rebuilds from the streams:
across both, every TurnNode the actors published ends in exactly one CompletedTree or in
the allocator's drop record, or is held in an open tree at the clean stop. Work routed to
an actor that then disappears is sent to the shared queue again."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from allocator.config import AllocatorConfig
from allocator.simulator import SimPrompt, SimulatedActor, SimulatorConfig
from bench.chaos import read_drop_records, read_held, read_stream_ids, reconcile, wait_consumer_drained
from environments.registry import make_tasks
from protocol import CompletedTree, Heartbeat, WeightsAnnouncement, WorkItem, decode, replace
from tests.processes import kill_groups, small_allocator_config, start_role, written

pytestmark = [pytest.mark.nats]

ACTOR = "a0"
STEPS_BEFORE_KILL = 2
STEPS_TOTAL = 5


def _allocator_config(bus_run, run_dir: Path, **overrides) -> AllocatorConfig:
    return small_allocator_config(bus_run, run_dir, batch_prompts=3, step_budget_turns=30, **overrides)


async def _drain_then_stop(bus_run, allocator: subprocess.Popen, log_path: Path) -> None:
    """Every stored node handled, then a clean stop (which records the open trees)."""
    s = bus_run.subjects
    drained = await wait_consumer_drained(
        Path(bus_run.run.run_dir), s.run_id, bus_run.bus.servers, s.allocator_consumer, 30.0
    )
    async with await bus_run.connect("admin") as admin:
        info = await admin.js.consumer_info(s.nodes_stream, s.allocator_consumer)
    assert drained, (info, log_path.read_text()[-3000:])
    allocator.send_signal(signal.SIGTERM)
    try:
        assert allocator.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        raise AssertionError("allocator did not stop: " + log_path.read_text()[-3000:]) from None


class FakeFleet:
    """One simulated actor and a learner that announces a version per whole step."""

    def __init__(self, bus_run, config: AllocatorConfig) -> None:
        self.bus_run = bus_run
        tasks = make_tasks(config.tasks.env, "train", config.tasks.train_tasks, config.tasks.seed)
        sim = SimulatorConfig(max_turns=config.core.max_turns, early_stop=0.3)
        self.sim = SimulatedActor(sim, [SimPrompt(t, 0.5) for t in tasks])
        self.rng = np.random.default_rng(0)
        self.version = 0
        self.actor_id = ACTOR
        self.steps_trained: set[int] = set()
        self.trees_by_step: dict[int, set[str]] = {}

    async def open(self) -> None:
        s = self.bus_run.subjects
        self.actor = await self.bus_run.connect("actor")
        self.learner = await self.bus_run.connect("learner")
        self.shared = await self.actor.js.pull_subscribe_bind(s.shared_work_consumer, stream=s.work_stream)
        await self.become(ACTOR)
        self.trees = await self.learner.js.pull_subscribe_bind(s.learner_consumer, stream=s.trees_stream)
        await self.announce()

    async def become(self, actor_id: str) -> None:
        """Serve (heartbeat, sample and pull routed work) as ``actor_id`` from now on."""
        self.actor_id = actor_id
        own = await self.actor.ensure_actor_consumer(actor_id, self.bus_run.limits)
        self.own = await self.actor.js.pull_subscribe_bind(own, stream=self.bus_run.subjects.work_stream)

    async def close(self) -> None:
        await self.actor.close()
        await self.learner.close()

    async def announce(self) -> None:
        await self.learner.announce_weights(
            WeightsAnnouncement(
                run_id=self.bus_run.run.run_id,
                policy_version=self.version,
                object_name="policy-slot0",
                sha256="0" * 64,
                num_bytes=1,
                format="safetensors",
                created_at=time.time(),
            )
        )

    async def heartbeat(self) -> None:
        await self.actor.put_actor(
            Heartbeat(
                run_id=self.bus_run.run.run_id,
                actor_id=self.actor_id,
                policy_version=self.version,
                inflight=0,
                capacity=64,
                tokens_generated=0,
                turns_generated=0,
                started_at=0.0,
                sent_at=time.time(),
            )
        )

    async def fetch_work(self, own: bool = True) -> list:
        msgs = []
        for sub in (self.shared, self.own) if own else (self.shared,):
            try:
                msgs += await sub.fetch(16, timeout=0.2)
            except Exception:  # noqa: BLE001 - nothing queued on this subject
                pass
        return msgs

    async def publish_nodes(self, nodes) -> None:
        for node in nodes:
            await self.actor.publish(self.bus_run.subjects.nodes_from(node.actor_id), node, msg_id=node.node_id)

    def rollout(self, msg):
        item = decode(msg.data, WorkItem)
        return self.sim.rollout(
            item, actor_id=self.actor_id, policy_version=self.version, rng=self.rng, now=time.time()
        )

    async def train(self) -> None:
        """Take every whole step on the trees stream, one version each."""
        try:
            msgs = await self.trees.fetch(64, timeout=0.2)
        except Exception:  # noqa: BLE001 - no trees yet
            return
        for msg in msgs:
            tree = decode(msg.data, CompletedTree)
            self.trees_by_step.setdefault(tree.allocator_step, set()).add(tree.tree_id)
            if (
                len(self.trees_by_step[tree.allocator_step]) >= tree.step_tree_count
                and tree.allocator_step not in self.steps_trained
            ):
                self.steps_trained.add(tree.allocator_step)
                self.version += 1
                await self.announce()
            await msg.ack()


def test_a_killed_allocator_is_rebuilt_from_the_streams_without_losing_or_repeating_nodes(bus_run, tmp_path):
    run_dir = tmp_path / "run"
    config = _allocator_config(bus_run, run_dir)
    config_path, log_path = written(config, "allocator", tmp_path)

    async def main() -> dict:
        fleet = FakeFleet(bus_run, config)
        await fleet.open()
        first = start_role("allocator", config_path, log_path)
        second = None
        try:
            killed_at = None
            deadline = time.monotonic() + 120
            while len(fleet.steps_trained) < STEPS_TOTAL:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await fleet.heartbeat()
                for msg in await fleet.fetch_work():
                    nodes = fleet.rollout(msg)
                    if killed_at is None and len(fleet.steps_trained) >= STEPS_BEFORE_KILL:
                        # Mid-item: half its turns stored, then the allocator dies; the actor goes on.
                        await fleet.publish_nodes(nodes[: len(nodes) // 2])
                        os.killpg(first.pid, signal.SIGKILL)
                        first.wait()
                        killed_at = time.monotonic()
                        second = start_role("allocator", config_path, log_path)
                        # This batch stays unacked on the work stream until the new one has rebuilt.
                        while log_path.read_text().count("allocator_rebuilt") < 2:
                            assert second.poll() is None, log_path.read_text()[-3000:]
                            await asyncio.sleep(0.2)
                        await fleet.publish_nodes(nodes[len(nodes) // 2 :])
                    else:
                        await fleet.publish_nodes(nodes)
                    await msg.ack()
                await fleet.train()
            assert killed_at is not None and second is not None and second.poll() is None
            await _drain_then_stop(bus_run, second, log_path)
        finally:
            kill_groups(first, second)
            await fleet.close()
        nodes, trees = await read_stream_ids(Path(bus_run.run.run_dir), bus_run.run.run_id, bus_run.bus.servers)
        return {"nodes": nodes, "trees": trees}

    streams = asyncio.run(main())
    held, recorded = read_held(run_dir)
    assert recorded
    r = reconcile(streams["nodes"], streams["trees"], read_drop_records(run_dir), held, [], 0.0)
    assert r.lost == [] and r.duplicated_in_trees == [] and r.phantom_in_trees == [] and r.trees_emitted_twice == []
    assert r.nodes_in_trees > 0.5 * r.accepted_nodes
    # The second allocator replayed the first one's trees, pending work and nodes.
    rebuilt = [line for line in log_path.read_text().splitlines() if "allocator_rebuilt" in line][-1]
    assert re.search(r"work_items=[1-9]", rebuilt) and re.search(r"trees=[1-9]", rebuilt), rebuilt
    steps = sorted({int(t.split("-")[0][1:]) for t, _ in streams["trees"]})
    assert len(steps) >= STEPS_TOTAL and steps == list(range(len(steps)))


def test_work_routed_to_an_actor_that_is_gone_goes_back_to_the_shared_queue(bus_run, tmp_path):
    """a0 never serves its own subject, then stops heartbeating; a1 takes over the shared
    queue. Without rerouting the branches routed to a0 would wait for the step timeout."""
    run_dir = tmp_path / "run"
    config = _allocator_config(bus_run, run_dir, actor_timeout_s=2.0)
    config = replace(config, core=replace(config.core, step_timeout_s=600.0))
    config_path, log_path = written(config, "allocator", tmp_path)

    async def main() -> dict:
        fleet = FakeFleet(bus_run, config)
        await fleet.open()
        allocator = start_role("allocator", config_path, log_path)
        try:
            deadline = time.monotonic() + 120
            trained_at_reroute = None
            # Until a0's work is sent on, and the (at most max_open_steps) steps that could be
            # waiting on it are trained: the last step may not need a0's work at all.
            while trained_at_reroute is None or len(fleet.steps_trained) < max(3, trained_at_reroute + 2):
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                if trained_at_reroute is None and "work_rerouted_from_gone_actors" in log_path.read_text():
                    trained_at_reroute = len(fleet.steps_trained)
                assert allocator.poll() is None, log_path.read_text()[-3000:]
                info = await fleet.actor.js.consumer_info(bus_run.subjects.work_stream, f"actor_{ACTOR}")
                if fleet.actor_id == ACTOR and info.num_pending:
                    await fleet.become("a1")  # a0 is gone with work waiting on its subject
                await fleet.heartbeat()
                for msg in await fleet.fetch_work(own=fleet.actor_id != ACTOR):
                    await fleet.publish_nodes(fleet.rollout(msg))
                    await msg.ack()
                await fleet.train()
            assert fleet.actor_id == "a1"
            await _drain_then_stop(bus_run, allocator, log_path)
        finally:
            kill_groups(allocator)
            await fleet.close()
        nodes, trees = await read_stream_ids(Path(bus_run.run.run_dir), bus_run.run.run_id, bus_run.bus.servers)
        return {"nodes": nodes, "trees": trees}

    streams = asyncio.run(main())
    rerouted = [line for line in log_path.read_text().splitlines() if "work_rerouted_from_gone_actors" in line]
    assert rerouted and all("a0" in line and "a1" not in line for line in rerouted), rerouted
    held, _ = read_held(run_dir)
    r = reconcile(streams["nodes"], streams["trees"], read_drop_records(run_dir), held, [], 0.0)
    assert r.lost == [] and r.duplicated_in_trees == []
