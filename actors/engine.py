"""The policy as a token-in, token-out generator over vLLM's async engine.

Many episodes share one engine concurrently: each turn is one request, and vLLM batches
whatever requests are in flight. A weight reload is a barrier between turns: new turns
wait, turns already running finish on the old weights, then the weights are swapped and
the prefix cache (whose KV entries were computed by the old weights) is dropped. A turn is
therefore always sampled by exactly one policy version, which it reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.config import EngineSettings
from protocol.messages import SamplingSpec
from tracerl.end_with_parent import multiprocessing_children_end_with_this_process
from tracerl.logs import get_logger

log = get_logger(__name__)

CPU_BLOCK_SIZE = 32

#: Where this process routes the engine's logs and output (``route_engine_logs``); None: the console.
_engine_log: Path | None = None


def engine_logging_config(log_file: str | Path, level: str) -> dict[str, Any]:
    """The ``logging.dictConfig`` of vLLM's ``vllm`` logger: everything at ``level`` and above to
    ``log_file`` (appended to by every engine process), nothing to the console."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "engine": {"format": "%(asctime)s %(processName)s pid=%(process)d %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "engine_file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "mode": "a",
                "formatter": "engine",
            },
        },
        "loggers": {"vllm": {"handlers": ["engine_file"], "level": level.upper(), "propagate": False}},
    }


def route_engine_logs(log_file: str | Path, level: str = "info") -> Path:
    """Send vLLM's logs, and all the engine processes print, to ``log_file`` rather than the console.

    vLLM configures its logger from the file named by VLLM_LOGGING_CONFIG_PATH, in this process
    and in each engine process it starts (they inherit the environment), so that file is written
    next to the log. What those processes print outside logging (warnings, progress bars, the
    C++ runtime's messages) goes to the standard streams they inherit, which point at the log
    while ``PolicyEngine.start`` starts them.
    """
    import logging.config

    global _engine_log
    log_file = Path(log_file).resolve()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config = engine_logging_config(log_file, level)
    config_file = log_file.with_name(log_file.name + ".logging.json")
    config_file.write_text(json.dumps(config, indent=2))
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
    logging.config.dictConfig(config)  # also for records logged before vLLM reads the variable
    _engine_log = log_file
    return log_file


@contextlib.contextmanager
def _engine_processes_output() -> Iterator[None]:
    """Standard output and error of the processes started inside go to the engine log.

    The processes inherit file descriptors 1 and 2, so those are pointed at the log while the
    block runs and pointed back afterwards; this process's own ``sys.stdout`` and ``sys.stderr``
    write to the same descriptors, so its output during the block lands in the log too.
    """
    if _engine_log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(_engine_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@dataclass(frozen=True)
class Generation:
    """One generated turn: ids and behaviour logprobs align one to one."""

    token_ids: list[int]
    behaviour_logprobs: list[float]
    text: str
    num_prompt_tokens: int
    num_cached_tokens: int
    finish_reason: str | None
    policy_version: int


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_engine_environment(settings: EngineSettings) -> dict[str, str]:
    """Environment variables the CPU engine's processes read at start-up."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kv_cache_gib),
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": str(settings.cpu_step_timeout_s),
    }
    if settings.cpu_onednn_primitive_cache:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(settings.cpu_onednn_primitive_cache)
    return env


def engine_kwargs(model_dir: str, settings: EngineSettings, gpu: bool) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments; the CPU and GPU paths differ only in these defaults."""
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "max_model_len": settings.max_model_len,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "max_num_seqs": settings.max_num_seqs,
        "logprobs_mode": settings.logprobs_mode,
        "seed": settings.seed,
    }
    if gpu:
        kwargs["dtype"] = settings.dtype
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        kwargs["tensor_parallel_size"] = settings.tensor_parallel_size
        if settings.block_size:
            kwargs["block_size"] = settings.block_size
    else:
        if settings.tensor_parallel_size != 1:
            raise ValueError("engine.tensor_parallel_size > 1 shards the model over GPUs; there are none here")
        kwargs["dtype"] = "float32" if settings.dtype == "auto" else settings.dtype
        kwargs["enforce_eager"] = True
        kwargs["block_size"] = settings.block_size or CPU_BLOCK_SIZE
    return kwargs


def derive_turn_seed(base_seed: int | None, sample_index: int, depth: int) -> int | None:
    """Distinct but reproducible seeds for the chains of one work item.

    The k samples of a work item share its SamplingSpec; with one seed they would all draw
    the same continuation, which defeats branching.
    """
    if base_seed is None:
        return None
    return (base_seed * 1_000_003 + sample_index * 10_007 + depth) % (2**31 - 1)


def turn_token_budget(context_len: int, max_model_len: int, max_tokens_per_turn: int) -> int:
    """How many tokens a turn may generate without overflowing the model's context."""
    return max(0, min(max_tokens_per_turn, max_model_len - context_len))


def sampled_logprobs(token_ids: Sequence[int], position_logprobs: Sequence[Any] | None) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position {token_id: Logprob} maps."""
    if position_logprobs is None or len(position_logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no logprob for some generated token; was logprobs=0 set?")
    return [float(position[token_id].logprob) for token_id, position in zip(token_ids, position_logprobs, strict=True)]


class _TurnGate:
    """Admits turns unless a reload is pending; a reload waits for admitted turns to finish."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    async def enter(self) -> None:
        await self._open.wait()
        self._inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def close_and_drain(self) -> None:
        self._open.clear()
        await self._idle.wait()

    def reopen(self) -> None:
        self._open.set()


class PolicyEngine:
    """vLLM AsyncLLM with tokens in, tokens and behaviour logprobs out, and in-place reloads.

    Create with ``await PolicyEngine.start(model_dir, settings)``; close with ``shutdown()``
    (or use ``async with``).
    """

    def __init__(self, llm: Any, tokenizer: Any, model_dir: str, settings: EngineSettings, policy_version: int) -> None:
        self._llm = llm
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.settings = settings
        self.policy_version = policy_version
        self.weights_dir = model_dir
        self._gate = _TurnGate()
        self._reload_lock = asyncio.Lock()
        self._request_ids = itertools.count()
        self._request_prefix = f"turn-{os.getpid()}-{id(self):x}"
        self.tokens_generated = 0
        self.turns_generated = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        # vLLM 0.32 on the CPU crashes the engine when a seeded request's prefill is chunked
        # ("CPU Generator does not use offset"), so per-request seeds are a GPU-only feature;
        # the engine-wide seed still makes CPU runs start from a fixed RNG state.
        self.request_seeds = on_gpu()

    @classmethod
    async def start(
        cls, model_dir: str | Path, settings: EngineSettings | None = None, policy_version: int = 0
    ) -> PolicyEngine:
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        settings = settings or EngineSettings()
        model_dir = str(model_dir)
        gpu = on_gpu()
        if not gpu:
            # Read by the engine processes vLLM spawns, so they must be set before start-up; a
            # value the user exported wins.
            for name, value in cpu_engine_environment(settings).items():
                os.environ.setdefault(name, value)
        started = time.perf_counter()
        # The engine core and its workers are processes of their own: without this, a SIGKILL of
        # this process would leave them running, holding their memory and device.
        try:
            with multiprocessing_children_end_with_this_process(), _engine_processes_output():
                llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(model_dir, settings, gpu)))
        except Exception:
            log.error("engine_start_failed", model_dir=model_dir, engine_log=str(_engine_log or "console"))
            raise
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        log.info("engine_started", model_dir=model_dir, gpu=gpu, seconds=round(time.perf_counter() - started, 1))
        engine = cls(llm, tokenizer, model_dir, settings, policy_version)
        # vLLM keeps an ImportError from its first import, and with it every frame on the stack then,
        # this one included, to interpreter exit. Were the AsyncLLM still one of its locals, it would
        # outlive shutdown() to exit, where its __del__ runs with the module globals gone and prints
        # a TypeError traceback.
        del llm
        return engine

    async def __aenter__(self) -> PolicyEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
            # Collected now, while the module globals its __del__ needs are there (see ``start``):
            # it sits in reference cycles, which the collector might leave to interpreter exit.
            del llm
            gc.collect()

    @property
    def is_dead(self) -> bool:
        return self._llm is None or bool(self._llm.errored)

    @property
    def inflight_turns(self) -> int:
        return self._gate.inflight

    async def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingSpec,
        *,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Generate one turn. ``seed`` overrides ``sampling.seed`` (see ``derive_turn_seed``)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        max_tokens = turn_token_budget(len(prompt_ids), self.settings.max_model_len, sampling.max_tokens_per_turn)
        if max_tokens < 1:
            raise ValueError(f"context of {len(prompt_ids)} tokens leaves no room under max_model_len")
        use_strings = stop_token_ids is None and bool(stop_strings)
        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=max_tokens,
            seed=(seed if seed is not None else sampling.seed) if self.request_seeds else None,
            logprobs=0,
            stop_token_ids=list(stop_token_ids or []),
            stop=list(stop_strings or ()) if use_strings else None,
            include_stop_str_in_output=True,
            skip_special_tokens=False,
            # Text is decoded from the ids below; vLLM's detokenizer is only needed for stop strings.
            detokenize=use_strings,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = f"{self._request_prefix}-{next(self._request_ids)}"
        await self._gate.enter()
        try:
            version = self.policy_version
            final = None
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, request_id):
                final = output
        finally:
            self._gate.leave()
        if final is None:
            raise RuntimeError(f"vLLM produced no output for request {request_id}")
        completion = final.outputs[0]
        token_ids = list(completion.token_ids)
        logprobs = sampled_logprobs(token_ids, completion.logprobs)
        text = completion.text if use_strings else self.tokenizer.decode(token_ids, skip_special_tokens=False)
        cached = int(final.num_cached_tokens or 0)
        self.tokens_generated += len(token_ids)
        self.turns_generated += 1
        self.prompt_tokens += len(prompt_ids)
        self.cached_tokens += cached
        return Generation(
            token_ids=token_ids,
            behaviour_logprobs=logprobs,
            text=text,
            num_prompt_tokens=len(prompt_ids),
            num_cached_tokens=cached,
            finish_reason=completion.finish_reason,
            policy_version=version,
        )

    async def reload_weights(self, weights_dir: str | Path, policy_version: int) -> float:
        """Swap in the weights in ``weights_dir`` between turns; returns the seconds the gate was closed."""
        async with self._reload_lock:
            await self._gate.close_and_drain()
            closed_at = time.perf_counter()
            try:
                try:
                    await self._load(weights_dir)
                except Exception:
                    # A failed layerwise load can leave some layers new and some old; put the
                    # last good weights back before any turn is admitted again.
                    log.exception("weights_reload_failed", policy_version=policy_version, weights_dir=str(weights_dir))
                    await self._load(self.weights_dir)
                    raise
                self.policy_version = policy_version
                self.weights_dir = str(weights_dir)
            finally:
                self._gate.reopen()
            paused = time.perf_counter() - closed_at
        log.info(
            "weights_reloaded", policy_version=policy_version, weights_dir=str(weights_dir), paused_s=round(paused, 4)
        )
        return paused

    async def _load(self, weights_dir: str | Path) -> None:
        await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights_dir)})
        # Cached KV blocks were computed by the old weights; reusing them would mix policies.
        await self._llm.reset_prefix_cache()
