"""The learner's typed config: shared run/bus/log parts plus the learner's own sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tracerl.config import BusConfig, LogConfig, RunConfig, WeightsConfig

AdvantageKind = Literal["flat_grpo", "tree_grpo", "value_difference"]
LossKind = Literal["ppo_clip", "decoupled_ppo", "lpo"]
# How a packed forward computes attention; see ModelSection.attention and learner.tree_attention.
AttentionKind = Literal["dense", "flex", "lean"]
ATTENTION_KINDS: tuple[AttentionKind, ...] = ("dense", "flex", "lean")
# What the "lean" training path recomputes in backward instead of keeping; see learner.recompute.
RecomputeKind = Literal["none", "mlp", "layers"]
RECOMPUTE_KINDS: tuple[RecomputeKind, ...] = ("none", "mlp", "layers")


@dataclass(frozen=True)
class ModelSection:
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
    lean_chunk_tokens: int = 256
    # Activations the "lean" path recomputes in backward instead of storing (its attention
    # probabilities are always recomputed): "mlp" each decoder layer's MLP, whose [L,
    # intermediate] activations are half of what a long forward keeps, at a few percent more
    # time; "layers" whole decoder layers (least memory, one more forward); "none".
    lean_recompute: RecomputeKind = "mlp"
    # Packed trees share one forward up to this many tokens; 0 runs one tree per forward.
    # A tree longer than the budget still gets a forward of its own.
    max_tokens_per_forward: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.lean_recompute not in RECOMPUTE_KINDS:
            raise ValueError(f"lean_recompute must be one of {RECOMPUTE_KINDS}, got {self.lean_recompute!r}")
        if self.lean_chunk_tokens < 1:
            raise ValueError(f"lean_chunk_tokens must be >= 1, got {self.lean_chunk_tokens}")
        if self.max_tokens_per_forward < 0:
            raise ValueError(f"max_tokens_per_forward must be >= 0, got {self.max_tokens_per_forward}")


@dataclass(frozen=True)
class OptimiserSection:
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")


@dataclass(frozen=True)
class AdvantageSection:
    kind: AdvantageKind = "tree_grpo"
    # Divide group-relative terms by (std + eps); value_difference ignores it.
    normalize_std: bool = True
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise ValueError(f"advantage eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class LossSection:
    kind: LossKind = "decoupled_ppo"
    clip_eps: float = 0.2
    # Cap C on the truncated importance weight proximal/behaviour (decoupled PPO).
    importance_cap: float = 2.0
    # LPO temperature: target q over a group's paths is proportional to exp(A / beta).
    lpo_beta: float = 1.0
    lpo_divergence: Literal["forward_kl", "reverse_kl"] = "forward_kl"
    # Weight of the k3 KL penalty to the initial (reference) policy; 0 disables it and
    # saves the reference model's memory and forward passes.
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must lie in (0, 1), got {self.clip_eps}")
        if not self.importance_cap >= 1:
            raise ValueError(f"importance_cap must be >= 1, got {self.importance_cap}")
        if not self.lpo_beta > 0:
            raise ValueError(f"lpo_beta must be > 0, got {self.lpo_beta}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


@dataclass(frozen=True)
class TrainingSection:
    # Staleness bound eta: tokens with learner_version - token_version > eta get no loss.
    staleness_eta: int = 4
    # 0: one update per allocator step (all trees the allocator emitted for it), which keeps
    # the allocator's step counter and the policy version in lockstep. N > 0: every N trees.
    trees_per_step: int = 0
    # A step still missing trees (lost with a crashed process) is trained without them
    # once a later step's trees have waited this long.
    step_wait_s: float = 30.0
    # The learner process exits (after a final checkpoint and export) after this many
    # optimiser steps; 0 means run until stopped.
    max_steps: int = 0
    # Optimiser updates per batch (PPO epochs). With more than one, decoupled PPO clips
    # against the policy frozen before the first; the version still goes up by one.
    updates_per_batch: int = 1
    checkpoint_dir: str = ""  # empty means "<run_dir>/checkpoints"
    checkpoint_every_steps: int = 10
    keep_checkpoints: int = 2
    # A checkpoint lists the ids of this many most recently trained trees, so a redelivered
    # tree it already holds is not trained twice (``learner.ledger``).
    trained_ids_kept: int = 50_000
    # Published weights older than the staleness bound are deleted from the object store,
    # unless an actor that sent a heartbeat within this many seconds still reports that version.
    weights_actor_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.staleness_eta < 0:
            raise ValueError(f"staleness_eta must be >= 0, got {self.staleness_eta}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.trees_per_step < 0:
            raise ValueError(f"trees_per_step must be >= 0, got {self.trees_per_step}")
        if self.step_wait_s <= 0:
            raise ValueError(f"step_wait_s must be > 0, got {self.step_wait_s}")
        if self.updates_per_batch < 1:
            raise ValueError(f"updates_per_batch must be >= 1, got {self.updates_per_batch}")
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.trained_ids_kept < 1:
            raise ValueError(f"trained_ids_kept must be >= 1, got {self.trained_ids_kept}")
        if self.weights_actor_timeout_s <= 0:
            raise ValueError(f"weights_actor_timeout_s must be > 0, got {self.weights_actor_timeout_s}")


@dataclass(frozen=True)
class ParallelSection:
    """How several learner processes (``torchrun --nproc_per_node N -m tracerl learner``) share the model."""

    # "ddp": every rank holds the whole model and optimiser, gradients are averaged.
    # "fsdp": parameters, gradients and optimiser state are sharded over the ranks with PyTorch
    # FSDP2 (``learner.sharding``), each decoder layer gathered only for its own forward and
    # backward; needed once the model and its Adam state outgrow one device. One process: no effect.
    strategy: Literal["ddp", "fsdp"] = "ddp"

    def __post_init__(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"parallel.strategy must be ddp or fsdp, got {self.strategy!r}")


@dataclass(frozen=True)
class LearnerConfig:
    """Everything `tracerl learner` needs; the seed is ``run.seed``."""

    run: RunConfig = field(default_factory=RunConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    model: ModelSection = field(default_factory=ModelSection)
    optimiser: OptimiserSection = field(default_factory=OptimiserSection)
    advantage: AdvantageSection = field(default_factory=AdvantageSection)
    loss: LossSection = field(default_factory=LossSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
