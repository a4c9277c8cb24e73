"""Typed configuration of the `tracerl actor` role and of the vLLM engine it owns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from protocol.subjects import check_run_id
from tracerl.config import BusConfig, LogConfig, RunConfig, WeightsConfig

LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]


@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine settings. Fields left at their "auto" value pick CPU or GPU defaults."""

    max_model_len: int = 2048
    # CPU attention accepts multiples of 32 only; 32 lets short agentic turns hit the prefix
    # cache in whole blocks. 0 keeps vLLM's platform default (used on GPU).
    block_size: int = 0
    enable_prefix_caching: bool = True
    # "auto" means float32 on CPU (bit-level parity with the learner) and the model's dtype on GPU.
    dtype: str = "auto"
    # KV cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU.
    cpu_kv_cache_gib: int = 1
    # Entries of oneDNN's primitive cache in the engine processes (ONEDNN_PRIMITIVE_CACHE_CAPACITY);
    # CPU only. The default 1024 keeps a compiled kernel per matmul shape, and agentic batches
    # bring new shapes for hours: a worker grew about 0.35-0.85 MB per learner step under 1024,
    # and levelled off within about 80 varied batches under 16, at the same speed
    # (README, "Soak"). 0 keeps oneDNN's default.
    cpu_onednn_primitive_cache: int = 16
    gpu_memory_utilization: float = 0.85
    # GPUs one engine shards the model over (vLLM's tensor parallelism); GPU only.
    tensor_parallel_size: int = 1
    max_num_seqs: int = 256
    # The behaviour policy is the distribution the token was actually sampled from, i.e. after
    # temperature and top-p; "raw_logprobs" gives the untempered model distribution instead.
    logprobs_mode: LogprobsMode = "processed_logprobs"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_model_len < 16:
            raise ValueError("engine.max_model_len must be >= 16")
        if self.block_size < 0 or self.block_size % 16:
            raise ValueError("engine.block_size must be 0 (platform default) or a positive multiple of 16")
        if self.cpu_kv_cache_gib < 1:
            raise ValueError("engine.cpu_kv_cache_gib must be >= 1")
        if self.cpu_onednn_primitive_cache < 0:
            raise ValueError("engine.cpu_onednn_primitive_cache must be >= 0 (0: oneDNN's default)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("engine.gpu_memory_utilization must be in (0, 1]")
        if self.tensor_parallel_size < 1:
            raise ValueError("engine.tensor_parallel_size must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("engine.max_num_seqs must be >= 1")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError("engine.dtype must be auto, float32, float16 or bfloat16")


def generate_actor_id() -> str:
    return f"actor-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ActorConfig:
    """One `tracerl actor` process: one vLLM engine, many concurrent episodes."""

    run: RunConfig = field(default_factory=RunConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    # HF-format directory with the initial policy (version 0) and its tokenizer.
    model_dir: str = "runs/default/model"
    # Empty means a fresh random id; a fixed id keeps the per-actor work subject across restarts.
    actor_id: str = ""
    # Work items held at once; each runs num_samples chains concurrently on the engine.
    max_inflight_items: int = 32
    heartbeat_interval_s: float = 2.0
    metrics_interval_s: float = 5.0
    # Longest wait of one pull request; bounds how quickly the actor notices a shutdown.
    pull_timeout_s: float = 1.0
    # How often an unfinished work item's ack deadline is pushed back with in_progress().
    progress_interval_s: float = 5.0
    # An item demanding a policy version this actor has not loaded waits this long for it,
    # then goes back to the queue for an actor that has it.
    version_wait_s: float = 60.0
    # Longest wait for one weights blob from the object store. A slower fetch is abandoned
    # (counted as ``fetch_timeout``) and the actor keeps serving its version; the next
    # announcement is fetched afresh. Large models over a slow link need more.
    weights_fetch_timeout_s: float = 300.0
    # Downloaded weight versions are written here; empty means "<run_dir>/actors/<actor_id>/weights".
    weights_dir: str = ""

    def __post_init__(self) -> None:
        check_run_id(self.run.run_id)
        if self.actor_id:
            check_run_id(self.actor_id)
        if self.max_inflight_items < 1:
            raise ValueError("max_inflight_items must be >= 1")
        for name in (
            "heartbeat_interval_s",
            "metrics_interval_s",
            "pull_timeout_s",
            "progress_interval_s",
            "version_wait_s",
            "weights_fetch_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not self.model_dir:
            raise ValueError("model_dir must be set")

    def resolved_actor_id(self) -> str:
        return self.actor_id or generate_actor_id()
