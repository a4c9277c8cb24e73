"""The actor's weights path against a real nats-server: a weights fetch that is too slow,
finds no object, or reads a corrupted or half-written blob leaves the actor serving its
old version (work within the staleness bound still runs on it, work that needs the new
version waits), is counted and logged, and the next good version is loaded. The engine is
a test double that reads the weights file it is handed; everything from the announcement
to that file (KV, object store, verification, version directory) is the actor's own code."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
import structlog
from safetensors.torch import load_file, save

from actors.config import ActorConfig
from actors.service import ActorService
from protocol import TurnNode, WeightsAnnouncement, replace
from tests.actors.doubles import CountingEnvironment, ReloadingEngine, make_item
from tracerl.metrics import metrics_path, read_metrics

pytestmark = [pytest.mark.nats]

FETCH_TIMEOUT_S = 0.5
# The allocator's bound in this test: it issues work with min_policy_version = version - 1.
STALENESS_ETA = 1


class SlowObjectReads:
    """The actor's real bus client; reads of the named objects first wait ``delay_s``, as
    over a congested link, then go to the object store."""

    def __init__(self, bus, slow: set[str], delay_s: float) -> None:
        self._bus = bus
        self.slow = slow
        self.delay_s = delay_s

    def __getattr__(self, name: str):
        return getattr(self._bus, name)

    async def get_object(self, name: str) -> bytes:
        if name in self.slow:
            await asyncio.sleep(self.delay_s)
        return await self._bus.get_object(name)


def weights_blob(model_dir: Path, version: int) -> bytes:
    """Weights of the model's shape, different for every version."""
    state = load_file(str(model_dir / "model.safetensors"))
    return save({k: v + 0.001 * version for k, v in state.items()}, metadata={"format": "pt"})


def announcement(run_id: str, version: int, object_name: str, blob: bytes) -> WeightsAnnouncement:
    return WeightsAnnouncement(
        run_id=run_id,
        policy_version=version,
        object_name=object_name,
        sha256=hashlib.sha256(blob).hexdigest(),
        num_bytes=len(blob),
        format="safetensors",
        created_at=time.time(),
    )


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# How version 2 goes wrong: what is stored under its object name (None: nothing), which
# objects read slowly, and the reason the actor must count.
def _slow(blob: bytes) -> bytes:
    return blob


def _corrupted(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0xFF])


def _half_written(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


CASES = {
    "slow": (_slow, {"w2"}, "fetch_timeout"),
    "missing": (None, set(), "fetch_failed"),
    "corrupted": (_corrupted, set(), "sha256_mismatch"),
    "half_written": (_half_written, set(), "size_mismatch"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_failed_weights_fetch_keeps_the_old_version_within_the_bound_until_the_next_good_one(
    case, bus_run, random_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    stored, slow, reason = CASES[case]
    run_id = bus_run.run.run_id
    subjects = bus_run.subjects
    engine = ReloadingEngine(AutoTokenizer.from_pretrained(random_model_dir))
    blobs = {v: weights_blob(random_model_dir, v) for v in (1, 2, 3)}
    weights_root = tmp_path / "weights"
    run_dir = tmp_path / "run"

    async def main() -> dict[str, set[int]]:
        learner = await bus_run.connect("learner")
        allocator = await bus_run.connect("allocator")
        actor_bus = await bus_run.connect("actor")
        config = ActorConfig(
            run=replace(bus_run.run, run_dir=str(run_dir)),
            bus=bus_run.bus,
            model_dir=str(random_model_dir),
            actor_id="fetch",
            heartbeat_interval_s=0.2,
            metrics_interval_s=60.0,
            weights_fetch_timeout_s=FETCH_TIMEOUT_S,
            weights_dir=str(weights_root),
        )
        # A read held up 20x the timeout: without the timeout the slow version would load.
        bus = SlowObjectReads(actor_bus, slow, delay_s=20 * FETCH_TIMEOUT_S)
        service = ActorService(config, engine, bus, "fetch", make_env=lambda _name: CountingEnvironment())
        serving = asyncio.create_task(service.serve())
        nodes_consumer = await allocator.pull_consumer(subjects.nodes_stream, subjects.allocator_consumer, TurnNode)
        versions_by_item: dict[str, set[int]] = {}
        finished: set[str] = set()

        async def on_node(node: TurnNode, _delivery) -> None:
            versions_by_item.setdefault(node.work_id, set()).add(node.policy_version)
            if node.done:
                finished.add(node.work_id)

        async def finish(work_id: str) -> None:
            deadline = time.monotonic() + 30
            while work_id not in finished:
                assert time.monotonic() < deadline, f"{work_id} did not finish"
                await nodes_consumer.process_batch(on_node, batch=50, timeout=0.2)

        async def run_item(work_id: str, min_version: int) -> None:
            item = make_item(
                run_id=run_id,
                work_id=work_id,
                tree_id=f"tree-{work_id}",
                num_samples=1,
                min_policy_version=min_version,
                issued_at=time.time(),
            )
            await allocator.publish(subjects.work_shared, item)

        try:
            await learner.put_object("w1", blobs[1])
            await learner.announce_weights(announcement(run_id, 1, "w1", blobs[1]))
            await until(lambda: engine.policy_version == 1, 10, "version 1")

            if stored is not None:
                await learner.put_object("w2", stored(blobs[2]))
            await learner.announce_weights(announcement(run_id, 2, "w2", blobs[2]))
            await until(lambda: service.weights_failures[reason] == 1, 10, f"a {reason} failure")
            assert engine.policy_version == 1 and service.latest_announced == 2
            # Nothing of version 2 reached the disk the engine loads from.
            assert sorted(p.name for p in weights_root.iterdir()) == ["v1"]
            assert not serving.done()

            # The allocator's bound admits version 1 for work issued at version 2; work that
            # demands version 2 must not run on version 1.
            await run_item("within-bound", 2 - STALENESS_ETA)
            await run_item("needs-new", 2)
            await finish("within-bound")
            assert "needs-new" not in versions_by_item

            await learner.put_object("w3", blobs[3])
            await learner.announce_weights(announcement(run_id, 3, "w3", blobs[3]))
            await finish("needs-new")
            assert engine.policy_version == 3
            assert sorted(p.name for p in weights_root.iterdir()) == ["v3"]
        finally:
            service.stop.set()
            exit_code = await asyncio.wait_for(serving, 30)
            for client in (learner, allocator, actor_bus):
                await client.close()
        assert exit_code == 0
        assert service.weights_loaded == 2 and dict(service.weights_failures) == {reason: 1}
        return versions_by_item

    with structlog.testing.capture_logs() as logs:
        versions_by_item = asyncio.run(main())
    assert versions_by_item == {"within-bound": {1}, "needs-new": {3}}
    sha = {v: hashlib.sha256(b).hexdigest() for v, b in blobs.items()}
    assert engine.loaded == [(1, sha[1]), (3, sha[3])]
    rejected = [e for e in logs if e["event"] == "weights_rejected"]
    assert [(e["policy_version"], e["reason"], e["serving"]) for e in rejected] == [(2, reason, 1)]
    final = [r for r in read_metrics(metrics_path(run_dir, "actor-fetch")) if r.get("final")]
    assert len(final) == 1
    assert {k: v for k, v in final[0].items() if k.startswith("weights_")} == {
        "weights_loaded": 2,
        f"weights_failed.{reason}": 1,
    }
