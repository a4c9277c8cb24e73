"""The actor service in-process on the session engine, against a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import time

import msgpack
import pytest
import torch
from safetensors.torch import load_file, save

from actors.config import ActorConfig
from actors.service import ActorService
from environments import make_tasks
from protocol import TaskSpec, TurnNode, WeightsAnnouncement, WorkItem
from protocol.messages import SamplingSpec

pytestmark = [pytest.mark.nats, pytest.mark.vllm]


def root_item(run_id: str, work_id: str, task: TaskSpec, num_samples: int = 2, **changes) -> WorkItem:
    fields = {
        "run_id": run_id,
        "work_id": work_id,
        "tree_id": f"tree-{work_id}",
        "kind": "root",
        "task": task,
        "num_samples": num_samples,
        "parent_id": None,
        "prefix_depth": 0,
        "prefix_token_ids": [],
        "env_snapshot": b"",
        "sampling": SamplingSpec(max_tokens_per_turn=12, seed=3),
        "max_turns": 3,
        "min_policy_version": 0,
        "issued_at": time.time(),
    }
    fields.update(changes)
    item = WorkItem(shard=0, **fields)
    ISSUED[item.work_id] = item
    return item


def branch_item(parent: TurnNode, prefix: list[int], work_id: str, num_samples: int = 2, **changes) -> WorkItem:
    fields = {
        "run_id": parent.run_id,
        "work_id": work_id,
        "tree_id": parent.tree_id,
        "kind": "branch",
        "task": parent.task,
        "num_samples": num_samples,
        "parent_id": parent.node_id,
        "prefix_depth": parent.depth,
        "prefix_token_ids": prefix,
        "env_snapshot": parent.env_snapshot,
        "sampling": SamplingSpec(max_tokens_per_turn=12, seed=4),
        "max_turns": 3,
        "min_policy_version": 0,
        "issued_at": time.time(),
    }
    fields.update(changes)
    item = WorkItem(shard=0, **fields)
    ISSUED[item.work_id] = item
    return item


#: Every item the helpers made, by work id: a chain's end depends on its item.
ISSUED: dict[str, WorkItem] = {}


def leaves_by_work(nodes: dict[str, TurnNode]) -> dict[str, int]:
    """Chains ended per work item (an episode ended, or the item's turns used up)."""
    counts: dict[str, int] = {}
    for node in nodes.values():
        item = ISSUED.get(node.work_id)
        if item.ends_chain(node) if item is not None else node.done:
            counts[node.work_id] = counts.get(node.work_id, 0) + 1
    return counts


async def drain_until(consumer, nodes: dict[str, TurnNode], done, timeout: float) -> None:
    async def on_node(node: TurnNode, _delivery) -> None:
        nodes[node.node_id] = node

    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await consumer.process_batch(on_node, batch=100, timeout=0.5)
    assert done(), f"timed out; leaves per work item: {leaves_by_work(nodes)}"


def test_actor_serves_roots_branches_weights_and_rejects_bad_items(engine_runner, engine_model_dir, bus_run, tmp_path):
    engine = engine_runner.engine
    subjects = bus_run.subjects
    run_id = bus_run.run.run_id

    async def main() -> None:
        allocator = await bus_run.connect("allocator")
        learner = await bus_run.connect("learner")
        admin = await bus_run.connect("admin")
        actor_bus = await bus_run.connect("actor")
        config = ActorConfig(
            run=bus_run.run,
            bus=bus_run.bus,
            model_dir=str(engine_model_dir),
            actor_id="inproc",
            max_inflight_items=6,
            heartbeat_interval_s=0.5,
            metrics_interval_s=1.0,
            progress_interval_s=0.5,
            weights_dir=str(tmp_path / "weights"),
        )
        service = ActorService(config, engine, actor_bus, "inproc")
        serving = asyncio.create_task(service.serve())
        nodes_consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
        nodes: dict[str, TurnNode] = {}

        tasks = make_tasks("multihop", "train", 6, seed=11)
        roots = [root_item(run_id, f"r{i}", task) for i, task in enumerate(tasks)]
        for item in roots:
            await allocator.publish(subjects.work_shared, item)
        # Three kinds of bad work: garbage bytes, an unknown environment, a corrupt snapshot.
        await allocator.js.publish(subjects.work_shared, b"\x93not a work item")
        await allocator.publish(subjects.work_shared, root_item(run_id, "bad-env", TaskSpec("no-such-env", "x")))
        expected_leaves = {item.work_id: 2 for item in roots}
        await drain_until(nodes_consumer, nodes, lambda: leaves_by_work(nodes) == expected_leaves, 240)
        assert {n.policy_version for n in nodes.values()} == {engine.policy_version}

        parent = next((n for n in nodes.values() if not n.done and n.depth == 1), None)
        assert parent is not None, "every random chain ended on its first turn"
        chain = [parent]
        prefix = list(parent.prompt_token_ids) + list(parent.action_token_ids) + list(parent.observation_token_ids)
        assert chain[0].depth == 1
        await allocator.publish(subjects.work_for_actor("inproc"), branch_item(parent, prefix, "b-own"))
        await allocator.publish(subjects.work_shared, branch_item(parent, prefix, "b-bad", env_snapshot=b"\xc1"))

        # A new version while branches run; then a blob whose shapes do not match the model.
        old_version = engine.policy_version
        state = load_file(str(engine_model_dir / "model.safetensors"))
        blob = save({k: v + 0.01 for k, v in state.items()}, metadata={"format": "pt"})
        await learner.put_object("w-new", blob)
        await learner.announce_weights(
            WeightsAnnouncement(
                run_id=run_id,
                policy_version=old_version + 1,
                object_name="w-new",
                sha256=hashlib.sha256(blob).hexdigest(),
                num_bytes=len(blob),
                format="safetensors",
                created_at=time.time(),
            )
        )
        await drain_until(
            nodes_consumer, nodes, lambda: "b-own" in leaves_by_work(nodes) and leaves_by_work(nodes)["b-own"] == 2, 120
        )
        branch_nodes = [n for n in nodes.values() if n.work_id == "b-own"]
        assert {n.parent_id for n in branch_nodes if n.depth == 2} == {parent.node_id}
        assert all(msgpack.unpackb(n.env_snapshot) is not None for n in branch_nodes)

        deadline = time.monotonic() + 30
        while engine.policy_version != old_version + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert engine.policy_version == old_version + 1
        later = root_item(run_id, "after-reload", tasks[0], num_samples=1, min_policy_version=old_version + 1)
        await allocator.publish(subjects.work_shared, later)
        await drain_until(nodes_consumer, nodes, lambda: "after-reload" in leaves_by_work(nodes), 60)
        assert {n.policy_version for n in nodes.values() if n.work_id == "after-reload"} == {old_version + 1}

        bad_blob = save({**dict(state.items()), "extra.weight": torch.zeros(2)}, metadata={"format": "pt"})
        await learner.put_object("w-bad", bad_blob)
        await learner.announce_weights(
            WeightsAnnouncement(
                run_id=run_id,
                policy_version=old_version + 2,
                object_name="w-bad",
                sha256=hashlib.sha256(bad_blob).hexdigest(),
                num_bytes=len(bad_blob),
                format="safetensors",
                created_at=time.time(),
            )
        )
        deadline = time.monotonic() + 5
        while service.latest_announced != old_version + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert service.latest_announced == old_version + 2 and engine.policy_version == old_version + 1

        actors = await allocator.get_actors()
        assert actors["inproc"].capacity == 6 and actors["inproc"].turns_generated > 0
        dlq = await admin.js.stream_info(subjects.dead_letter_stream)
        assert dlq.state.messages >= 3
        assert service.items_rejected == 2  # bad-env and b-bad; the garbage never reached the handler

        service.stop.set()
        assert await asyncio.wait_for(serving, 30) == 0
        assert "inproc" not in await allocator.get_actors()
        for client in (allocator, learner, admin, actor_bus):
            await client.close()

    async def traced() -> None:
        import traceback

        try:
            await main()
        except BaseException:
            traceback.print_exc()
            raise

    engine_runner.run(traced(), timeout=600)
