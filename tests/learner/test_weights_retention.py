"""Which weight versions the learner deletes: closed-form cases of the pure decision, and a
real nats-server on which old weight objects are deleted and the usable ones stay."""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
import pytest

from learner.weights_retention import (
    live_actor_versions,
    prune_weights,
    weights_object_name,
    weights_object_version,
    weights_versions_to_delete,
)
from protocol import Heartbeat
from tests.fixtures.nats import BusRun
from tests.heartbeats import idle_heartbeat


def beat(actor_id: str, version: int, sent_at: float, run_id: str = "r") -> Heartbeat:
    return idle_heartbeat(run_id, actor_id, sent_at, policy_version=version, started_at=sent_at - 10, capacity=4)


def test_object_names_carry_their_version_and_other_names_none() -> None:
    assert weights_object_name(12) == "policy-v12"
    assert weights_object_version("policy-v12") == 12
    assert weights_object_version(weights_object_name(0)) == 0
    for other in ("policy-slot1", "policy-v", "policy-v1x", "xpolicy-v3", "model.safetensors"):
        assert weights_object_version(other) is None


def test_versions_below_the_staleness_bound_go_unless_a_live_actor_holds_one() -> None:
    # current 10, eta 3: usable are 7..10; 6 is held by a live actor.
    assert weights_versions_to_delete(range(11), 10, 3, {6, 9}) == [0, 1, 2, 3, 4, 5]
    # eta 0 keeps only the current version (and the held ones).
    assert weights_versions_to_delete([8, 9, 10], 10, 0, set()) == [8, 9]
    # Nothing is older than the bound yet.
    assert weights_versions_to_delete([0, 1, 2], 2, 4, set()) == []
    # A version above the current one (a learner that resumed behind the run) stays.
    assert weights_versions_to_delete([3, 11], 10, 2, set()) == [3]
    # Repeats in the listing are one version.
    assert weights_versions_to_delete([1, 1, 2], 5, 1, []) == [1, 2]
    with pytest.raises(ValueError):
        weights_versions_to_delete([1], 5, -1, [])


def test_only_actors_heard_from_within_the_timeout_hold_a_version() -> None:
    now = 1000.0
    beats = [beat("a", 3, now - 5), beat("b", 4, now - 30), beat("c", 5, now - 31)]
    assert live_actor_versions(beats, now, 30.0) == {3, 4}
    assert live_actor_versions(beats, now, 1.0) == set()


@pytest.mark.nats
def test_old_weight_objects_are_deleted_from_the_real_store(bus_run: BusRun) -> None:
    async def main() -> None:
        async with await bus_run.connect("learner") as learner, await bus_run.connect("actor") as actor:
            for version in range(8):
                await learner.put_object(weights_object_name(version), bytes([version]) * 3000)
            await learner.put_object("unrelated", b"kept")
            # A live actor still on version 2; a dead one (heartbeat an hour old) on version 1.
            now = time.time()
            await actor.put_actor(beat("live", 2, now, bus_run.run.run_id))
            await actor.put_actor(beat("dead", 1, now - 3600, bus_run.run.run_id))
            pruned = await prune_weights(learner, current_version=7, staleness_eta=3, actor_timeout_s=60.0, now=now)
            assert pruned.deleted == (0, 1, 3)
            assert pruned.kept == (2, 4, 5, 6, 7)
            assert sorted(await learner.list_objects()) == sorted(
                ["unrelated", *(weights_object_name(v) for v in (2, 4, 5, 6, 7))]
            )
            # The deleted objects' chunks and delete markers are gone from the stream: only
            # the kept objects' one chunk and one meta message each remain.
            info = await learner.js.stream_info(f"OBJ_{bus_run.subjects.weights_bucket}")
            assert info.state.messages == 2 * 6
            assert await learner.get_object(weights_object_name(4)) == bytes([4]) * 3000
            with pytest.raises(nats.js.errors.NotFoundError):
                await learner.get_object(weights_object_name(3))
            # Once the live actor moves on, its old version goes too; a second pass is idempotent.
            await actor.put_actor(beat("live", 7, time.time(), bus_run.run.run_id))
            again = await prune_weights(learner, 7, 3, 60.0, time.time())
            assert again.deleted == (2,)
            assert (await prune_weights(learner, 7, 3, 60.0, time.time())).deleted == ()

    asyncio.run(main())
