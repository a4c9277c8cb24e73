"""Real actor processes on a real bus: a crash loses nothing, a late joiner takes work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from environments import make_tasks
from protocol import TurnNode
from tests.actors.test_service_nats import ISSUED, branch_item, root_item

pytestmark = [pytest.mark.nats, pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NUM_ROOTS_EARLY, NUM_BRANCHES, NUM_ROOTS_LATE = 25, 10, 15


def start_actor(bus_run, model_dir: Path, actor_id: str, tmp_path: Path) -> subprocess.Popen:
    config = {
        "run": {"run_id": bus_run.run.run_id, "run_dir": bus_run.run.run_dir},
        "bus": {"servers": bus_run.bus.servers, "request_timeout_s": 5.0, "max_reconnect_attempts": 5},
        "log": {"level": "info", "json_file": False},
        "engine": {"max_model_len": 1024, "cpu_kv_cache_gib": 1},
        "model_dir": str(model_dir),
        "actor_id": actor_id,
        "max_inflight_items": 8,
        "heartbeat_interval_s": 0.5,
        "metrics_interval_s": 2.0,
        "progress_interval_s": 0.5,
        "weights_dir": str(tmp_path / actor_id / "weights"),
    }
    path = tmp_path / f"{actor_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / f"{actor_id}.log").open("wb")
    # Own process group: a SIGKILL of the group takes vLLM's engine processes down at once, as a
    # host crash would (killing only the actor's pid ends them too, a moment later).
    return subprocess.Popen([sys.executable, "-m", "actors", "--config", str(path)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop_all(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        kill_group(proc)


def redelivered_work_ids(tmp_path: Path, actor_ids: tuple[str, ...]) -> set[str]:
    found = set()
    for actor_id in actor_ids:
        text = (tmp_path / f"{actor_id}.log").read_text(errors="replace")
        found |= set(re.findall(r"work_item_redelivered\s.*?work_id=(\S+)", text))
    return found


def test_fifty_items_survive_a_sigkill_and_a_late_joiner_takes_work(random_model_dir, bus_run, tmp_path):
    subjects = bus_run.subjects
    run_id = bus_run.run.run_id
    processes = {name: start_actor(bus_run, random_model_dir, name, tmp_path) for name in ("a1", "a2")}

    async def main() -> dict[str, int]:
        allocator = await bus_run.connect("allocator")
        consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
        nodes: dict[str, TurnNode] = {}
        deliveries: dict[str, int] = {}
        expected: dict[str, int] = {}

        async def on_node(node: TurnNode, _delivery) -> None:
            deliveries[node.node_id] = deliveries.get(node.node_id, 0) + 1
            nodes.setdefault(node.node_id, node)

        def leaves(work_id: str) -> int:
            return sum(1 for n in nodes.values() if n.work_id == work_id and ISSUED[work_id].ends_chain(n))

        def completed() -> list[str]:
            return [w for w, k in expected.items() if leaves(w) >= k]

        async def wait_registered(names: set[str], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if names <= set(await allocator.get_actors()):
                    return
                for name in names:
                    assert processes[name].poll() is None, f"actor {name} exited early"
                await asyncio.sleep(1.0)
            raise AssertionError(f"actors {names} did not register")

        async def pump(until, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, f"{len(completed())}/{len(expected)} items completed"
                await consumer.process_batch(on_node, batch=200, timeout=0.5)
                await issue_branches()

        branched_parents: set[str] = set()

        async def issue_branches() -> None:
            # Branch from live first turns as they arrive; half go to a2's own (prefix-affinity) subject.
            for node in list(nodes.values()):
                if len(branched_parents) >= NUM_BRANCHES:
                    return
                if node.done or node.depth != 1 or node.node_id in branched_parents:
                    continue
                prefix = list(node.prompt_token_ids) + list(node.action_token_ids) + list(node.observation_token_ids)
                item = branch_item(node, prefix, f"b{len(branched_parents)}")
                subject = subjects.work_for_actor("a2") if len(branched_parents) % 2 else subjects.work_shared
                expected[item.work_id] = item.num_samples
                branched_parents.add(node.node_id)
                await allocator.publish(subject, item)

        await wait_registered({"a1", "a2"}, 600)
        tasks = make_tasks("multihop", "train", NUM_ROOTS_EARLY + NUM_ROOTS_LATE, seed=5)
        for i, task in enumerate(tasks[:NUM_ROOTS_EARLY]):
            item = root_item(run_id, f"r{i}", task)
            expected[item.work_id] = item.num_samples
            await allocator.publish(subjects.work_shared, item)

        async def drain(seconds: float) -> None:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                await consumer.process_batch(on_node, batch=200, timeout=0.2)
                await issue_branches()

        async def freeze_a1_mid_item() -> set[str]:
            """Stop a1 (SIGSTOP) at a moment it holds an item whose nodes are partly out.

            Sampled, not triggered by what the consumer has seen: the consumer lags the stream,
            and the random model can finish an item (or all of its work) within that lag. So a1 is
            frozen, the stream drained, and a1 resumed for a moment if it holds no partial item.
            """
            await pump(lambda: any(n.actor_id == "a1" for n in nodes.values()), 600)
            while True:
                os.killpg(processes["a1"].pid, signal.SIGSTOP)
                await drain(1.0)
                partial = {n.work_id for n in nodes.values() if n.actor_id == "a1"} - set(completed())
                if partial:
                    return partial
                assert len(completed()) < len(expected), "every item finished before a1 was caught mid-item"
                os.killpg(processes["a1"].pid, signal.SIGCONT)
                await asyncio.sleep(0.2)

        left_partial = await freeze_a1_mid_item()
        kill_group(processes["a1"])
        processes["a3"] = start_actor(bus_run, random_model_dir, "a3", tmp_path)
        await wait_registered({"a3"}, 600)
        for i, task in enumerate(tasks[NUM_ROOTS_EARLY:], start=NUM_ROOTS_EARLY):
            item = root_item(run_id, f"r{i}", task)
            expected[item.work_id] = item.num_samples
            await allocator.publish(subjects.work_shared, item)
        await pump(lambda: len(branched_parents) == NUM_BRANCHES and len(completed()) == len(expected), 600)

        assert len(expected) == NUM_ROOTS_EARLY + NUM_BRANCHES + NUM_ROOTS_LATE == 50
        for work_id, k in expected.items():
            item_nodes = [n for n in nodes.values() if n.work_id == work_id]
            # Exactly k chains, each ending once: a redelivered item regenerated the same ids.
            assert leaves(work_id) == k, (work_id, sorted(n.node_id for n in item_nodes))
            assert all(n.parent_id is None or n.parent_id in nodes for n in item_nodes)
        # The items a1 died in the middle of were redelivered to the others (their logs say so),
        # and the exact-k check above shows they were finished under the same node ids.
        actors_by_node = {name: sum(n.actor_id == name for n in nodes.values()) for name in ("a1", "a2", "a3")}
        not_redelivered = left_partial - redelivered_work_ids(tmp_path, ("a2", "a3"))
        assert not not_redelivered, f"a1's unfinished items never redelivered: {not_redelivered}; nodes by actor {actors_by_node}"
        assert actors_by_node["a3"] > 0, f"the late joiner took no work; nodes by actor {actors_by_node}"

        for name in ("a2", "a3"):
            processes[name].send_signal(signal.SIGTERM)
        for name in ("a2", "a3"):
            returncode = await asyncio.to_thread(processes[name].wait, 120)
            assert returncode == 0, f"actor {name} exited {returncode} on SIGTERM; see {tmp_path / (name + '.log')}"
        remaining = set(await allocator.get_actors())
        assert not {"a2", "a3"} & remaining, f"stopped actors still registered: {remaining}"
        await allocator.close()
        return {**actors_by_node, "redelivered_nodes": sum(c - 1 for c in deliveries.values())}

    try:
        summary = asyncio.run(main())
        print("nodes per actor and duplicates seen:", summary)
    finally:
        stop_all(list(processes.values()))
