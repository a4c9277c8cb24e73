"""A real `tracerl learner` process against a real nats-server, SIGKILLed after it announced a
version and started again from its checkpoint: the run's announced versions go strictly up
(the restarted learner does not announce its resume version a second time), training goes
on to the next version, and a learner whose checkpoint is behind the announced version
refuses to start instead of announcing versions that go back. Trees a killed learner held
and had not checkpointed are trained by its successor, each exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bench.chaos import version_violations
from learner.config import LearnerConfig, ModelSection, OptimiserSection, TrainingSection
from learner.service import TREES_METRICS
from learner.versions import Publication, read_publications
from protocol import CompletedTree, Subjects, WeightsAnnouncement
from protocol.messages import replace
from tests.learner.models import TINY_VOCAB
from tests.learner.trees import random_tree
from tests.processes import kill_groups, start_role, written
from tracerl.config import LogConfig, RunConfig
from tracerl.metrics import metrics_path, read_metrics

pytestmark = [pytest.mark.nats]

T = TypeVar("T")
TREES_PER_STEP = 2
START_TIMEOUT_S = 180.0


def _learner_config(bus_run, run_dir: Path, model_dir: Path) -> LearnerConfig:
    credentials = Path(bus_run.run.run_dir) / "credentials" / "learner.json"
    return LearnerConfig(
        run=RunConfig(run_id=bus_run.run.run_id, run_dir=str(run_dir)),
        bus=replace(bus_run.bus, credentials=str(credentials), max_reconnect_attempts=10),
        log=LogConfig(level="info"),
        model=ModelSection(model_dir=str(model_dir)),
        optimiser=OptimiserSection(lr=1e-3),
        # Every version is checkpointed before it is announced: the supported restart set-up.
        training=TrainingSection(checkpoint_every_steps=1, staleness_eta=4),
    )


def _learner_files(bus_run, model_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The learner's run dir, config file and output file."""
    run_dir = tmp_path / "run"
    config_path, out = written(_learner_config(bus_run, run_dir, model_dir), "learner", tmp_path)
    return run_dir, config_path, out


async def _announced(client) -> WeightsAnnouncement | None:
    return await client.get_weights_announcement()


async def _kv_revision(admin) -> int:
    kv = await admin.js.key_value(admin.subjects.state_bucket)
    return (await kv.get(Subjects.POLICY_VERSION_KEY)).revision


async def _until(what: str, check: Callable[[], Awaitable[T | None]], learner: subprocess.Popen, out: Path) -> T:
    """Poll ``check`` until it returns something, failing if the learner exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert learner.poll() is None, out.read_text()[-3000:]
        found = await check()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what} never happened: " + out.read_text()[-3000:]
        await asyncio.sleep(0.2)


async def _wait_version(admin, version: int, learner: subprocess.Popen, out: Path) -> WeightsAnnouncement:
    async def reached() -> WeightsAnnouncement | None:
        current = await _announced(admin)
        return current if current is not None and current.policy_version >= version else None

    current = await _until(f"version {version}", reached, learner, out)
    assert current.policy_version == version, (current, out.read_text()[-3000:])
    return current


def _step_trees(run_id: str, step: int, count: int = TREES_PER_STEP, version: int | None = None) -> list[CompletedTree]:
    """One allocator step's trees, sampled by the policy of ``version`` (default: ``step``)."""
    rng = random.Random(step)
    return [
        replace(
            random_tree(rng, f"s{step}-{i}", TINY_VOCAB, version=step if version is None else version),
            run_id=run_id,
            allocator_step=step,
            step_tree_count=count,
        )
        for i in range(count)
    ]


async def _publish_step(allocator, run_id: str, step: int, version: int | None = None) -> None:
    for tree in _step_trees(run_id, step, version=version):
        await allocator.publish(allocator.subjects.trees, tree, msg_id=tree.tree_id)


def _log_has(run_dir: Path, event: str) -> int:
    path = run_dir / "logs" / "learner.jsonl"
    return path.read_text().count(f'"event": "{event}"') if path.exists() else 0


async def _wait_started(run_dir: Path, count: int, learner: subprocess.Popen, out: Path) -> None:
    async def started() -> bool | None:
        return True if _log_has(run_dir, "learner_started") >= count else None

    await _until(f"start {count}", started, learner, out)


def test_a_restarted_learner_does_not_announce_its_version_again_and_never_goes_back(bus_run, tiny_model_dir, tmp_path):
    run_dir, config_path, out = _learner_files(bus_run, tiny_model_dir, tmp_path)
    run_id = bus_run.run.run_id

    async def main() -> None:
        admin = await bus_run.connect("admin")
        allocator = await bus_run.connect("allocator")
        first = start_role("learner", config_path, out)
        second = third = None
        try:
            await _wait_version(admin, 0, first, out)
            for step in (0, 1):
                await _publish_step(allocator, run_id, step)
                await _wait_version(admin, step + 1, first, out)
            before_kill = await _announced(admin)
            revision = await _kv_revision(admin)
            kill_groups(first)

            second = start_role("learner", config_path, out)
            await _wait_started(run_dir, 2, second, out)
            # Resumed at version 2, which the run already has: the KV entry was not rewritten.
            assert await _kv_revision(admin) == revision
            assert await _announced(admin) == before_kill
            await _publish_step(allocator, run_id, 2)
            after = await _wait_version(admin, 3, second, out)
            assert after.sha256 != before_kill.sha256
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=120) == 0, out.read_text()[-3000:]

            # A run that has announced past the newest checkpoint (here: version 7 from elsewhere):
            # the learner goes on from its checkpoint's weights (those of 3) as version 8.
            async with await bus_run.connect("learner") as rogue:
                ahead = replace(after, policy_version=7, sha256="ee" * 32, created_at=time.time())
                await rogue.announce_weights(ahead)
            third = start_role("learner", config_path, out)
            rewound = await _wait_version(admin, 8, third, out)
            assert rewound.sha256 == after.sha256
            await _publish_step(allocator, run_id, 3, version=8)
            await _wait_version(admin, 9, third, out)
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=120) == 0, out.read_text()[-3000:]
        finally:
            kill_groups(first, second, third)
            await allocator.close()
            await admin.close()
        publications = read_publications(run_dir)
        assert [p.policy_version for p in publications] == [0, 1, 2, 3, 8, 9]
        assert version_violations(publications) == []
        assert publications[2] == Publication(2, before_kill.sha256)
        assert publications[3] == Publication(3, after.sha256)
        assert publications[4] == Publication(8, after.sha256)

    asyncio.run(main())
    assert _log_has(run_dir, "weights_rewound") == 1


async def _learner_durable(admin):
    return await admin.js.consumer_info(admin.subjects.trees_stream, admin.subjects.learner_consumer)


async def _wait_held(admin, count: int, learner: subprocess.Popen, out: Path) -> None:
    """Until the learner has taken ``count`` trees it has not acked, and nothing waits undelivered."""

    async def held() -> bool | None:
        info = await _learner_durable(admin)
        return True if info.num_ack_pending == count and info.num_pending == 0 else None

    await _until(f"{count} trees held", held, learner, out)


def test_a_killed_learner_loses_no_buffered_tree_and_its_successor_trains_each_once(bus_run, tiny_model_dir, tmp_path):
    run_dir, config_path, out = _learner_files(bus_run, tiny_model_dir, tmp_path)
    run_id = bus_run.run.run_id
    step0 = _step_trees(run_id, 0)
    step1 = _step_trees(run_id, 1, count=3)
    limits = bus_run.limits

    async def main() -> None:
        admin = await bus_run.connect("admin")
        allocator = await bus_run.connect("allocator")
        first = start_role("learner", config_path, out)
        second = None
        try:
            await _wait_version(admin, 0, first, out)
            for tree in step0:
                await allocator.publish(allocator.subjects.trees, tree, msg_id=tree.tree_id)
            await _wait_version(admin, 1, first, out)
            # Two of step 1's three trees: buffered, and no step can use them yet.
            for tree in step1[:2]:
                await allocator.publish(allocator.subjects.trees, tree, msg_id=tree.tree_id)
            await _wait_held(admin, 2, first, out)
            # Held for longer than max_deliver ack_waits: kept alive, so never redelivered
            # (and so never dead-lettered as a message that failed max_deliver times).
            await asyncio.sleep(limits.max_deliver * limits.ack_wait_s + 1.0)
            info = await _learner_durable(admin)
            assert (info.num_ack_pending, info.num_redelivered) == (2, 0), info
            assert (await _announced(admin)).policy_version == 1  # not trained
            kill_groups(first)

            # A second copy of a tree the checkpoint holds, as if its ack had died with the learner.
            await allocator.publish(allocator.subjects.trees, step0[0], msg_id=f"{step0[0].tree_id}-again")
            second = start_role("learner", config_path, out)
            await _wait_started(run_dir, 2, second, out)
            await allocator.publish(allocator.subjects.trees, step1[2], msg_id=step1[2].tree_id)
            await _wait_version(admin, 2, second, out)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=120) == 0, out.read_text()[-3000:]
            info = await _learner_durable(admin)
            assert (info.num_ack_pending, info.num_pending) == (0, 0), info  # every tree acked
        finally:
            kill_groups(first, second)
            await allocator.close()
            await admin.close()

    asyncio.run(main())
    records = list(read_metrics(metrics_path(run_dir, TREES_METRICS)))
    trained = Counter(i for r in records if r["event"] == "trained" for i in r["tree_ids"])
    # 0 lost, none twice: each tree in exactly one checkpoint, across both learners.
    assert trained == {t.tree_id: 1 for t in step0 + step1}
    assert [r["tree_ids"] for r in records if r["event"] == "already_trained"] == [[step0[0].tree_id]]
    steps = [r for r in read_metrics(metrics_path(run_dir, "learner")) if "step" in r]
    assert [(r["step"], r["train.trees"]) for r in steps] == [(1, 2), (2, 3)]
