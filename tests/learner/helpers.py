"""Config and batch builders shared by the trainer tests and the two-process worker."""

from __future__ import annotations

import random

import torch

from learner.config import (
    LearnerConfig,
    LossSection,
    ModelSection,
    OptimiserSection,
    ParallelSection,
    TrainingSection,
)
from learner.losses import path_sums
from learner.packing import ForwardBatch
from protocol.messages import CompletedTree
from tests.learner.trees import random_tree

VOCAB = 600


def learner_config(
    model_dir,
    packing: bool = True,
    loss_kind: str = "decoupled_ppo",
    attention: str = "dense",
    max_tokens_per_forward: int = 0,
    strategy: str = "ddp",
    updates_per_batch: int = 1,
    **loss,
) -> LearnerConfig:
    return LearnerConfig(
        model=ModelSection(
            model_dir=str(model_dir),
            packing=packing,
            attention=attention,
            max_tokens_per_forward=max_tokens_per_forward,
            lean_chunk_tokens=32,
        ),
        optimiser=OptimiserSection(lr=1e-3, max_grad_norm=1.0),
        loss=LossSection(kind=loss_kind, **loss),
        training=TrainingSection(staleness_eta=2, updates_per_batch=updates_per_batch),
        parallel=ParallelSection(strategy=strategy),
    )


def batches(seed: int, steps: int, trees_per_step: int = 4) -> list[list[CompletedTree]]:
    """Deterministic batches; every node's version is 0 so they are fresh for 2 steps."""
    rng = random.Random(seed)
    return [
        [random_tree(rng, f"s{s}t{i}", VOCAB, chains=2, max_turns=3) for i in range(trees_per_step)]
        for s in range(steps)
    ]


def path_logprob_sums(token_logprobs: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    """Each path's summed target logprobs, in the batch's path order."""
    return path_sums(token_logprobs, batch.path_of_pair, batch.target_of_pair, len(batch.path_leaf))
