"""Real actor processes on a real bus: a crash loses nothing, a late joiner takes work, and an
item taken again is a new sampling whose node ids never collide with the first run's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
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
from protocol.messages import chain_slot
from tests.actors.test_service_nats import ISSUED, branch_item, root_item

pytestmark = [pytest.mark.nats, pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NUM_ROOTS_EARLY, NUM_BRANCHES, NUM_ROOTS_LATE = 25, 10, 15
# Roots added, a few at a time, when the actor to be frozen mid-item finished everything first.
MAX_EXTRA_ROOTS, EXTRA_ROOTS_PER_REFILL = 20, 4


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
    return subprocess.Popen(
        [sys.executable, "-m", "actors", "--config", str(path)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


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


def sampling_of(node_id: str) -> str:
    """The sampling part of an actor's node id (``<work>/<sampling>/<sample>/<depth>``)."""
    return node_id.rsplit("/", 3)[1]


class RootFeeder:
    """Publishes root items for a list of tasks, a few at a time, and records what it expects."""

    def __init__(self, allocator, subjects, run_id: str, watch: NodeWatch, tasks, prefix: str, num_samples: int = 2):
        self.allocator, self.subjects, self.run_id, self.watch = allocator, subjects, run_id, watch
        self.tasks, self.prefix, self.num_samples = tasks, prefix, num_samples
        self.published = 0

    async def publish(self, count: int) -> bool:
        """Publish the next ``count`` roots; whether any task was left to publish."""
        start = self.published
        for task in self.tasks[start : start + count]:
            item = root_item(self.run_id, f"{self.prefix}{self.published}", task, num_samples=self.num_samples)
            self.watch.expected[item.work_id] = item.num_samples
            await self.allocator.publish(self.subjects.work_shared, item)
            self.published += 1
        return self.published > start


class NodeWatch:
    """The nodes stream as an allocator sees it, and which chain slots of each item have ended."""

    def __init__(self, consumer, on_round=None) -> None:
        self.consumer = consumer
        self.on_round = on_round
        self.nodes: dict[str, TurnNode] = {}
        self.deliveries: dict[str, int] = {}
        self.expected: dict[str, int] = {}  # work id -> num_samples

    async def _on_node(self, node: TurnNode, _delivery) -> None:
        self.deliveries[node.node_id] = self.deliveries.get(node.node_id, 0) + 1
        self.nodes.setdefault(node.node_id, node)

    def item_nodes(self, work_id: str) -> list[TurnNode]:
        return [n for n in self.nodes.values() if n.work_id == work_id]

    def slots_ended(self, work_id: str, samplings: set[str] | None = None) -> set[int | str]:
        """Chain slots of the item ended by any sampling (or by one of ``samplings``)."""
        return {
            chain_slot(n.node_id)
            for n in self.item_nodes(work_id)
            if ISSUED[work_id].ends_chain(n) and (samplings is None or sampling_of(n.node_id) in samplings)
        }

    def completed(self) -> list[str]:
        return [w for w, k in self.expected.items() if len(self.slots_ended(w)) >= k]

    def later_samplings(self, work_id: str, earlier: set[str]) -> set[str]:
        return {sampling_of(n.node_id) for n in self.item_nodes(work_id)} - earlier

    def run_again(self, work_ids: set[str], earlier: set[str]) -> bool:
        """Whether samplings other than ``earlier`` have ended every chain slot of these items."""
        return all(
            self.slots_ended(w, self.later_samplings(w, earlier)) == set(range(self.expected[w])) for w in work_ids
        )

    async def _round(self, timeout: float) -> None:
        await self.consumer.process_batch(self._on_node, batch=200, timeout=timeout)
        if self.on_round is not None:
            await self.on_round()

    async def pump(self, until, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, f"{len(self.completed())}/{len(self.expected)} items completed"
            await self._round(0.5)

    async def drain(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            await self._round(0.2)

    async def freeze_mid_item(
        self, proc: subprocess.Popen, actor_id: str, refill=None, others: tuple[subprocess.Popen, ...] = ()
    ) -> set[str]:
        """Stop an actor (SIGSTOP) at a moment it holds an item whose nodes are partly out.

        Sampled, not triggered by what the consumer has seen: the consumer lags the stream,
        and the random model can finish an item (or all of its work) within that lag. So the
        actor is frozen, the stream drained, and the actor resumed for a moment if it holds no
        partial item. When every item has finished first (on a loaded machine the ``others``
        took the work while this actor was frozen), ``refill`` publishes more work and returns
        whether it could, and the others are frozen until this actor is caught.
        """
        await self.pump(lambda: any(n.actor_id == actor_id for n in self.nodes.values()), 600)
        others_frozen = False
        try:
            while True:
                os.killpg(proc.pid, signal.SIGSTOP)
                await self.drain(1.0)
                partial = {n.work_id for n in self.nodes.values() if n.actor_id == actor_id} - set(self.completed())
                if partial:
                    return partial
                if len(self.completed()) == len(self.expected):
                    assert refill is not None and await refill(), f"every item finished before {actor_id} was caught"
                    for other in others:
                        os.killpg(other.pid, signal.SIGSTOP)
                    others_frozen = True
                os.killpg(proc.pid, signal.SIGCONT)
                # A window of varying length, so the freeze falls at other points of an item.
                await asyncio.sleep(random.uniform(0.02, 0.2))
        finally:
            if others_frozen:
                for other in others:
                    os.killpg(other.pid, signal.SIGCONT)

    def assert_paths_within_samplings(self, work_id: str) -> None:
        """Every chain's first node hangs under the item's parent, every later one under a node
        of its own sampling: no path mixes two runs of the item."""
        item = ISSUED[work_id]
        for node in self.item_nodes(work_id):
            if node.depth == item.prefix_depth + 1:
                assert node.parent_id == item.parent_id, node.node_id
            else:
                assert node.parent_id in self.nodes, node.node_id
                assert sampling_of(node.parent_id) == sampling_of(node.node_id), (node.node_id, node.parent_id)


async def wait_registered(allocator, processes: dict[str, subprocess.Popen], names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if names <= set(await allocator.get_actors()):
            return
        for name in names:
            assert processes[name].poll() is None, f"actor {name} exited early"
        await asyncio.sleep(1.0)
    raise AssertionError(f"actors {names} did not register")


def test_fifty_items_survive_a_sigkill_and_a_late_joiner_takes_work(random_model_dir, bus_run, tmp_path):
    subjects = bus_run.subjects
    run_id = bus_run.run.run_id
    processes = {name: start_actor(bus_run, random_model_dir, name, tmp_path) for name in ("a1", "a2")}

    async def main() -> dict[str, int]:
        allocator = await bus_run.connect("allocator")
        consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
        branched_parents: set[str] = set()

        async def issue_branches() -> None:
            # Branch from live first turns as they arrive; half go to a2's own (prefix-affinity) subject.
            for node in list(watch.nodes.values()):
                if len(branched_parents) >= NUM_BRANCHES:
                    return
                if node.done or node.depth != 1 or node.node_id in branched_parents:
                    continue
                prefix = list(node.prompt_token_ids) + list(node.action_token_ids) + list(node.observation_token_ids)
                item = branch_item(node, prefix, f"b{len(branched_parents)}")
                subject = subjects.work_for_actor("a2") if len(branched_parents) % 2 else subjects.work_shared
                watch.expected[item.work_id] = item.num_samples
                branched_parents.add(node.node_id)
                await allocator.publish(subject, item)

        watch = NodeWatch(consumer, issue_branches)
        await wait_registered(allocator, processes, {"a1", "a2"}, 600)
        tasks = make_tasks("multihop", "train", NUM_ROOTS_EARLY + NUM_ROOTS_LATE + MAX_EXTRA_ROOTS, seed=5)
        roots = RootFeeder(allocator, subjects, run_id, watch, tasks[: NUM_ROOTS_EARLY + NUM_ROOTS_LATE], "r")
        extra = RootFeeder(allocator, subjects, run_id, watch, tasks[NUM_ROOTS_EARLY + NUM_ROOTS_LATE :], "x")
        await roots.publish(NUM_ROOTS_EARLY)

        left_partial = await watch.freeze_mid_item(
            processes["a1"], "a1", lambda: extra.publish(EXTRA_ROOTS_PER_REFILL), others=(processes["a2"],)
        )
        first_samplings = {sampling_of(n.node_id) for n in watch.nodes.values() if n.actor_id == "a1"}
        kill_group(processes["a1"])
        processes["a3"] = start_actor(bus_run, random_model_dir, "a3", tmp_path)
        await wait_registered(allocator, processes, {"a3"}, 600)
        await roots.publish(NUM_ROOTS_LATE)
        await watch.pump(
            lambda: (
                len(branched_parents) == NUM_BRANCHES
                and len(watch.completed()) == len(watch.expected)
                and watch.run_again(left_partial, first_samplings)
            ),
            600,
        )

        assert len(watch.expected) == NUM_ROOTS_EARLY + NUM_BRANCHES + NUM_ROOTS_LATE + extra.published
        for work_id, k in watch.expected.items():
            # Every chain slot ended, and no path mixes two runs of the item.
            ids = sorted(n.node_id for n in watch.item_nodes(work_id))
            assert watch.slots_ended(work_id) == set(range(k)), (work_id, ids)
            watch.assert_paths_within_samplings(work_id)
        # The items a1 died in the middle of were redelivered to the others (their logs say so),
        # and each was run again in full under node ids of its own: a1's partial chains were
        # not continued.
        actors_by_node = {name: sum(n.actor_id == name for n in watch.nodes.values()) for name in ("a1", "a2", "a3")}
        not_redelivered = left_partial - redelivered_work_ids(tmp_path, ("a2", "a3"))
        assert not not_redelivered, (
            f"a1's unfinished items never redelivered: {not_redelivered}; nodes by actor {actors_by_node}"
        )
        assert watch.run_again(left_partial, first_samplings)
        assert actors_by_node["a3"] > 0, f"the late joiner took no work; nodes by actor {actors_by_node}"

        for name in ("a2", "a3"):
            processes[name].send_signal(signal.SIGTERM)
        for name in ("a2", "a3"):
            returncode = await asyncio.to_thread(processes[name].wait, 120)
            assert returncode == 0, f"actor {name} exited {returncode} on SIGTERM; see {tmp_path / (name + '.log')}"
        remaining = set(await allocator.get_actors())
        assert not {"a2", "a3"} & remaining, f"stopped actors still registered: {remaining}"
        await allocator.close()
        return {**actors_by_node, "redelivered_nodes": sum(c - 1 for c in watch.deliveries.values())}

    try:
        summary = asyncio.run(main())
        print("nodes per actor and duplicates seen:", summary)
    finally:
        stop_all(list(processes.values()))


def test_a_restarted_actor_runs_its_predecessors_items_again_under_new_node_ids(random_model_dir, bus_run, tmp_path):
    subjects = bus_run.subjects
    run_id = bus_run.run.run_id
    processes = {"first": start_actor(bus_run, random_model_dir, "a1", tmp_path)}
    again_dir = tmp_path / "again"
    again_dir.mkdir()

    async def main() -> None:
        allocator = await bus_run.connect("allocator")
        consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
        watch = NodeWatch(consumer)
        await wait_registered(allocator, {"a1": processes["first"]}, {"a1"}, 600)
        tasks = make_tasks("multihop", "train", 6 + MAX_EXTRA_ROOTS, seed=17)
        roots = RootFeeder(allocator, subjects, run_id, watch, tasks, "x", num_samples=3)
        await roots.publish(6)
        partial = await watch.freeze_mid_item(processes["first"], "a1", lambda: roots.publish(EXTRA_ROOTS_PER_REFILL))
        before = {n.node_id: n for n in watch.nodes.values()}
        kill_group(processes["first"])
        # The same actor id again: what a supervisor restarting a crashed actor does.
        processes["again"] = start_actor(bus_run, random_model_dir, "a1", again_dir)
        first_samplings = {sampling_of(i) for i in before}
        await watch.pump(
            lambda: len(watch.completed()) == len(watch.expected) and watch.run_again(partial, first_samplings), 600
        )
        for work_id in partial:
            # Run again from its first turn, every chain, under ids no node of the first run has
            # (the nodes stream would have dropped a reused id as a duplicate).
            redone = [n for n in watch.item_nodes(work_id) if sampling_of(n.node_id) not in first_samplings]
            assert redone and not {n.node_id for n in redone} & before.keys()
            watch.assert_paths_within_samplings(work_id)
        await allocator.close()

    try:
        asyncio.run(main())
    finally:
        stop_all(list(processes.values()))
