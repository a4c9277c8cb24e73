"""Typed configuration of the `tracerl actor` role and of the vLLM engine it owns."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from msgspec import Meta

from protocol.subjects import check_run_id
from tracerl.config import AtLeast0, AtLeast1, BusConfig, Config, LogConfig, Positive, RunConfig, WeightsConfig

LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]


class EngineSettings(Config, frozen=True):
    """vLLM engine settings. Fields left at their "auto" value pick CPU or GPU defaults."""

    max_model_len: Annotated[int, Meta(ge=16)] = 2048
    # CPU attention accepts multiples of 32 only; 32 lets short agentic turns hit the prefix
    # cache in whole blocks. 0 keeps vLLM's platform default (used on GPU).
    block_size: Annotated[int, Meta(ge=0, multiple_of=16)] = 0
    enable_prefix_caching: bool = True
    # "auto" means float32 on CPU (bit-level parity with the learner) and the model's dtype on GPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # KV cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE); ignored on GPU.
    cpu_kv_cache_gib: AtLeast1 = 1
    # Entries of oneDNN's primitive cache in the engine processes (ONEDNN_PRIMITIVE_CACHE_CAPACITY);
    # CPU only. The default 1024 keeps a compiled kernel per matmul shape, and agentic batches
    # bring new shapes for hours: a worker grew about 0.35-0.85 MB per learner step under 1024,
    # and levelled off within about 80 varied batches under 16, at the same speed
    # (README, "Soak"). 0 keeps oneDNN's default.
    cpu_onednn_primitive_cache: AtLeast0 = 16
    # How long the CPU engine waits for its worker's step before declaring the engine dead
    # (vLLM's VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS, 300 by default). A step takes milliseconds,
    # but on a loaded 2-core machine a worker's first step was seen to pass 300 s and fail a
    # run; a worker that truly hangs is still caught, later.
    cpu_step_timeout_s: AtLeast1 = 1800
    gpu_memory_utilization: Annotated[float, Meta(gt=0, le=1)] = 0.85
    # GPUs one engine shards the model over (vLLM's tensor parallelism); GPU only.
    tensor_parallel_size: AtLeast1 = 1
    max_num_seqs: AtLeast1 = 256
    # The behaviour policy is the distribution the token was actually sampled from, i.e. after
    # temperature and top-p; "raw_logprobs" gives the untempered model distribution instead.
    logprobs_mode: LogprobsMode = "processed_logprobs"
    seed: int = 0


def generate_actor_id() -> str:
    return f"actor-{uuid.uuid4().hex[:8]}"


class ActorConfig(Config, frozen=True):
    """One `tracerl actor` process: one vLLM engine, many concurrent episodes."""

    run: RunConfig = RunConfig()
    bus: BusConfig = BusConfig()
    log: LogConfig = LogConfig()
    engine: EngineSettings = EngineSettings()
    weights: WeightsConfig = WeightsConfig()
    # HF-format directory with the initial policy (version 0) and its tokenizer.
    model_dir: Annotated[str, Meta(min_length=1)] = "runs/default/model"
    # Empty means a fresh random id; a fixed id keeps the per-actor work subject across restarts.
    actor_id: str = ""
    # Work items held at once; each runs num_samples chains concurrently on the engine.
    max_inflight_items: AtLeast1 = 32
    heartbeat_interval_s: Positive = 2.0
    metrics_interval_s: Positive = 5.0
    # Longest wait of one pull request; bounds how quickly the actor notices a shutdown.
    pull_timeout_s: Positive = 1.0
    # How often an unfinished work item's ack deadline is pushed back with in_progress().
    progress_interval_s: Positive = 5.0
    # An item demanding a policy version this actor has not loaded waits this long for it,
    # then goes back to the queue for an actor that has it.
    version_wait_s: Positive = 60.0
    # Longest wait for one weights blob from the object store. A slower fetch is abandoned
    # (counted as ``fetch_timeout``) and the actor keeps serving its version; the next
    # announcement is fetched afresh. Large models over a slow link need more.
    weights_fetch_timeout_s: Positive = 300.0
    # Downloaded weight versions are written here; empty means "<run_dir>/actors/<actor_id>/weights".
    weights_dir: str = ""

    def __post_init__(self) -> None:
        check_run_id(self.run.run_id)
        if self.actor_id:
            check_run_id(self.actor_id)

    def resolved_actor_id(self) -> str:
        return self.actor_id or generate_actor_id()
