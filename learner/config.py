"""The learner's typed config: shared run/bus/log parts plus the learner's own sections."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from tracerl.config import AtLeast0, AtLeast1, BusConfig, Config, LogConfig, Positive, RunConfig, WeightsConfig

AdvantageKind = Literal["flat_grpo", "tree_grpo", "value_difference"]
LossKind = Literal["ppo_clip", "decoupled_ppo", "lpo"]
# How a packed forward computes attention; see ModelSection.attention and learner.tree_attention.
AttentionKind = Literal["dense", "flex", "lean"]
# What the "lean" training path recomputes in backward instead of keeping; see learner.recompute.
RecomputeKind = Literal["none", "mlp", "layers"]
# An Adam beta.
Beta = Annotated[float, Meta(ge=0, lt=1)]


class ModelSection(Config, frozen=True):
    # A Hugging Face format directory (config.json + safetensors), e.g. a local Qwen3.
    model_dir: str = ""
    # float32 on the CPU; bfloat16 is meant for GPUs.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Tree packing computes shared prefixes once; unpacked runs one row per root-to-leaf path.
    packing: bool = True
    # How a packed forward computes attention (``learner.tree_attention``): "dense" builds the
    # [L, L] tree mask for SDPA (the reference; quadratic memory); "flex" uses FlexAttention
    # with the tree's block mask everywhere (GPUs: PyTorch has no CPU backward for it);
    # "lean" trains by query chunks over each chunk's ancestor keys and runs forwards without
    # gradients (proximal, reference) through FlexAttention. Unpacked rows always use SDPA.
    attention: AttentionKind = "dense"
    # Queries per chunk of the "lean" path: its transient scores are heads x chunk x keys.
    lean_chunk_tokens: AtLeast1 = 256
    # Activations the "lean" path recomputes in backward instead of storing (its attention
    # probabilities are always recomputed): "mlp" each decoder layer's MLP, whose [L,
    # intermediate] activations are half of what a long forward keeps, at a few percent more
    # time; "layers" whole decoder layers (least memory, one more forward); "none".
    lean_recompute: RecomputeKind = "mlp"
    # Packed trees share one forward up to this many tokens; 0 runs one tree per forward.
    # A tree longer than the budget still gets a forward of its own.
    max_tokens_per_forward: AtLeast0 = 0


class OptimiserSection(Config, frozen=True):
    lr: Positive = 1e-5
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    weight_decay: Annotated[float, Meta(ge=0)] = 0.0
    eps: Positive = 1e-8
    max_grad_norm: Positive = 1.0


class AdvantageSection(Config, frozen=True):
    kind: AdvantageKind = "tree_grpo"
    # Divide group-relative terms by (std + eps); value_difference ignores it.
    normalize_std: bool = True
    eps: Positive = 1e-6


class LossSection(Config, frozen=True):
    kind: LossKind = "decoupled_ppo"
    # How token losses are averaged over a batch. "token": every trained token (counted once
    # per path through it) weighs the same, so a tree with many branch leaves outweighs a
    # root group of four. "tree": each tree is averaged over its own tokens first and trees
    # weigh the same, so every prompt of the step pulls equally (learner.losses).
    normalization: Literal["token", "tree"] = "token"
    clip_eps: Annotated[float, Meta(gt=0, lt=1)] = 0.2
    # Cap C on the truncated importance weight proximal/behaviour (decoupled PPO).
    importance_cap: Annotated[float, Meta(ge=1)] = 2.0
    # LPO temperature: target q over a group's paths is proportional to exp(A / beta).
    lpo_beta: Positive = 1.0
    lpo_divergence: Literal["forward_kl", "reverse_kl"] = "forward_kl"
    # Weight of the k3 KL penalty to the initial (reference) policy; 0 disables it and
    # saves the reference model's memory and forward passes.
    kl_coef: Annotated[float, Meta(ge=0)] = 0.0


class TrainingSection(Config, frozen=True):
    # Staleness bound eta: tokens with learner_version - token_version > eta get no loss.
    staleness_eta: AtLeast0 = 4
    # 0: one update per allocator step (all trees the allocator emitted for it), which keeps
    # the allocator's step counter and the policy version in lockstep. N > 0: every N trees.
    trees_per_step: AtLeast0 = 0
    # A step still missing trees (lost with a crashed process) is trained without them
    # once a later step's trees have waited this long.
    step_wait_s: Positive = 30.0
    # The learner process exits (after a final checkpoint and export) after this many
    # optimiser steps; 0 means run until stopped.
    max_steps: AtLeast0 = 0
    # Optimiser updates per batch (PPO epochs). With more than one, decoupled PPO clips
    # against the policy frozen before the first; the version still goes up by one.
    updates_per_batch: AtLeast1 = 1
    checkpoint_dir: str = ""  # empty means "<run_dir>/checkpoints"
    checkpoint_every_steps: AtLeast1 = 10
    keep_checkpoints: AtLeast1 = 2
    # A checkpoint lists the ids of this many most recently trained trees, so a redelivered
    # tree it already holds is not trained twice (``learner.ledger``).
    trained_ids_kept: AtLeast1 = 50_000
    # Published weights older than the staleness bound are deleted from the object store,
    # unless an actor that sent a heartbeat within this many seconds still reports that version.
    weights_actor_timeout_s: Positive = 60.0


class ParallelSection(Config, frozen=True):
    """How several learner processes (``torchrun --nproc_per_node N -m tracerl learner``) share the model."""

    # "ddp": every rank holds the whole model and optimiser, gradients are averaged.
    # "fsdp": parameters, gradients and optimiser state are sharded over the ranks with PyTorch
    # FSDP2 (``learner.sharding``), each decoder layer gathered only for its own forward and
    # backward; needed once the model and its Adam state outgrow one device. One process: no effect.
    strategy: Literal["ddp", "fsdp"] = "ddp"


class LearnerConfig(Config, frozen=True):
    """Everything `tracerl learner` needs; the seed is ``run.seed``."""

    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
    model: ModelSection = ModelSection()
    optimiser: OptimiserSection = OptimiserSection()
    advantage: AdvantageSection = AdvantageSection()
    loss: LossSection = LossSection()
    training: TrainingSection = TrainingSection()
    parallel: ParallelSection = ParallelSection()
    weights: WeightsConfig = WeightsConfig()
