"""The learner shell's step loop with a scripted trainer: which versions it announces and records."""

from __future__ import annotations

import asyncio
import random

from learner.config import LearnerConfig
from learner.ledger import TrainedTrees
from learner.service import LearnerService
from learner.versions import read_publications
from protocol.messages import replace
from tests.learner.trees import random_tree
from tracerl.config import RunConfig


class ScriptedTrainer:
    """Takes or skips each step as scripted; the weights change only with a step taken."""

    world_size = 1

    def __init__(self, skips: list[bool], version: int) -> None:
        self.skips = list(skips)
        self.policy_version = version
        self.steps_done = version
        self.trained_trees = TrainedTrees(100)

    def share_batch(self, batch):
        return batch

    def train_step(self, trees):
        if self.skips.pop(0):
            return {"skipped": True, "skip_reason": "nothing_to_train", "policy_version": self.policy_version}
        self.policy_version += 1
        self.steps_done += 1
        self.trained_trees.add(tree.tree_id for tree in trees)
        return {"skipped": False, "policy_version": self.policy_version}

    def save_rolling_checkpoint(self):
        return None

    def export_weights(self) -> bytes:
        return f"weights of version {self.policy_version}".encode()


class AnnouncingBus:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.announced: list[int] = []

    async def put_object(self, name: str, blob: bytes) -> None:
        pass

    async def announce_weights(self, announcement) -> None:
        self.announced.append(announcement.policy_version)


def test_a_step_that_changed_no_weight_announces_no_version(tmp_path):
    # A restarted learner at version 6 whose next step is all past the staleness bound.
    config = LearnerConfig(run=RunConfig(run_id="steps", run_dir=str(tmp_path)))
    trainer = ScriptedTrainer(skips=[False, True, False], version=6)
    bus = AnnouncingBus()
    service = LearnerService(config, trainer, bus)
    rng = random.Random(0)
    for step in range(3):
        tree = random_tree(rng, f"s{step}-0", 600)
        service.batcher.add(replace(tree, allocator_step=step, step_tree_count=1), 0.0)
    asyncio.run(service.train_ready_batches())
    assert trainer.skips == [] and trainer.policy_version == 8
    assert bus.announced == [7, 8]
    assert [p.policy_version for p in read_publications(tmp_path)] == [7, 8]
    service.metrics.close()
    service.announcements.close()
    service.tree_records.close()
