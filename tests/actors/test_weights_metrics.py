"""Pure helpers: weight-blob verification, metrics arithmetic, engine arguments and seeds."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save, save_file

from actors.config import ActorConfig, EngineSettings
from actors.engine import derive_turn_seed, engine_kwargs, sampled_logprobs, turn_token_budget
from actors.metrics import Counters, Rates, interval_record, queue_wait_s, rates_between, version_lag
from actors.weights import (
    WeightsError,
    model_dir_signature,
    prune_versions,
    safetensors_signature,
    verify_blob,
    write_version_dir,
)
from protocol.messages import WeightsAnnouncement
from tracerl.config import ConfigError, load_config

TENSORS = {"a.weight": torch.zeros(3, 4), "b.bias": torch.ones(5)}


def announce(blob: bytes, **changes) -> WeightsAnnouncement:
    fields = {
        "run_id": "r",
        "policy_version": 1,
        "object_name": "w1",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "num_bytes": len(blob),
        "format": "safetensors",
        "created_at": 0.0,
    }
    fields.update(changes)
    return WeightsAnnouncement(**fields)


def test_signature_reads_names_dtypes_and_shapes():
    assert safetensors_signature(save(TENSORS)) == {"a.weight": ("F32", (3, 4)), "b.bias": ("F32", (5,))}


@pytest.mark.parametrize(
    "blob", [b"", b"\x00" * 7, (10**9).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]"]
)
def test_malformed_blobs_are_rejected(blob):
    with pytest.raises(WeightsError) as err:
        safetensors_signature(blob)
    assert err.value.reason == "malformed"


def test_verify_accepts_a_matching_blob_and_rejects_each_kind_of_mismatch(tmp_path):
    save_file(TENSORS, tmp_path / "model.safetensors")
    reference = model_dir_signature(tmp_path)
    good = save(TENSORS)
    verify_blob(good, announce(good), reference)
    cases = {
        "sha256_mismatch": (good, announce(good, sha256="0" * 64)),
        "size_mismatch": (good, announce(good, num_bytes=len(good) + 1)),
        "shape_mismatch": (save({**TENSORS, "b.bias": torch.ones(6)}), None),
    }
    missing = save({"a.weight": TENSORS["a.weight"]})
    cases["shape_mismatch_missing"] = (missing, None)
    for reason, (blob, ann) in cases.items():
        with pytest.raises(WeightsError) as err:
            verify_blob(blob, ann or announce(blob), reference)
        assert err.value.reason == reason.removesuffix("_missing")


def test_version_dirs_are_written_whole_and_pruned(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    root = tmp_path / "weights"
    first = write_version_dir(save(TENSORS), model, root, 1)
    second = write_version_dir(save(TENSORS), model, root, 2)
    assert (first / "model.safetensors").is_file() and (second / "config.json").read_text() == "{}"
    prune_versions(root, keep={2})
    assert sorted(p.name for p in root.iterdir()) == ["v2"]


def test_rates_between_two_samples():
    before = Counters(
        at=10.0,
        tokens_generated=100,
        turns_generated=4,
        prompt_tokens=1000,
        cached_tokens=200,
        items_started=2,
        queue_wait_s_total=1.0,
    )
    after = Counters(
        at=12.0,
        tokens_generated=500,
        turns_generated=8,
        prompt_tokens=2000,
        cached_tokens=950,
        items_started=4,
        queue_wait_s_total=2.0,
    )
    rates = rates_between(before, after)
    assert rates.tokens_per_s == 200 and rates.turns_per_s == 2
    assert rates.prefix_cache_hit_rate == pytest.approx(0.75) and rates.mean_queue_wait_s == pytest.approx(0.5)
    idle = rates_between(
        after,
        Counters(
            at=13.0,
            **{
                k: getattr(after, k)
                for k in (
                    "tokens_generated",
                    "turns_generated",
                    "prompt_tokens",
                    "cached_tokens",
                    "items_started",
                    "queue_wait_s_total",
                )
            },
        ),
    )
    assert idle.prefix_cache_hit_rate == 0.0 and idle.mean_queue_wait_s == 0.0 and idle.tokens_per_s == 0


def test_version_lag_and_queue_wait():
    assert version_lag(None, 3) == 0 and version_lag(5, 3) == 2 and version_lag(2, 3) == 0
    assert queue_wait_s(10.0, 12.5) == 2.5 and queue_wait_s(12.0, 10.0) == 0.0


def test_interval_record_rounds_rates_and_carries_the_weights_and_bus_counters():
    rates = Rates(
        interval_s=5.0,
        tokens_per_s=123.456,
        turns_per_s=1.2345,
        prefix_cache_hit_rate=0.12345,
        mean_queue_wait_s=0.98765,
    )
    record = interval_record(
        rates,
        latest_announced=7,
        policy_version=5,
        inflight_items=2,
        inflight_turns=3,
        items_completed=10,
        items_rejected=1,
        nodes_published=40,
        weights_loaded=4,
        weights_failures={"sha256_mismatch": 1, "fetch_timeout": 2},
        bus_counters={"rejected.malformed": 3, "handled": 9},
    )
    assert record == {
        "tokens_per_s": 123.5,
        "turns_per_s": 1.23,
        "prefix_cache_hit_rate": 0.123,
        "queue_wait_s": 0.988,
        "version_lag": 2,
        "policy_version": 5,
        "inflight_items": 2,
        "inflight_turns": 3,
        "items_completed": 10,
        "items_rejected": 1,
        "nodes_published": 40,
        "weights_loaded": 4,
        "weights_failed.fetch_timeout": 2,
        "weights_failed.sha256_mismatch": 1,
        "bus.handled": 9,
        "bus.rejected.malformed": 3,
    }


def test_engine_kwargs_pick_cpu_and_gpu_defaults():
    cpu = engine_kwargs("m", EngineSettings(), gpu=False)
    assert (cpu["dtype"], cpu["block_size"], cpu["enforce_eager"], cpu["enable_prefix_caching"]) == (
        "float32",
        32,
        True,
        True,
    )
    gpu = engine_kwargs("m", EngineSettings(), gpu=True)
    assert gpu["dtype"] == "auto" and "block_size" not in gpu and "enforce_eager" not in gpu
    assert gpu["tensor_parallel_size"] == 1
    assert engine_kwargs("m", EngineSettings(tensor_parallel_size=4), gpu=True)["tensor_parallel_size"] == 4
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        engine_kwargs("m", EngineSettings(tensor_parallel_size=2), gpu=False)


def test_cpu_engine_environment_bounds_the_onednn_kernel_cache():
    from actors.engine import cpu_engine_environment

    settings = EngineSettings(cpu_kv_cache_gib=2, cpu_onednn_primitive_cache=16, cpu_step_timeout_s=900)
    assert cpu_engine_environment(settings) == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "900",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16",
    }
    # Far past vLLM's 300 s by default: a loaded machine's first step was seen to pass it.
    assert cpu_engine_environment(EngineSettings())["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "1800"
    # 0 leaves oneDNN's own default in place.
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in cpu_engine_environment(EngineSettings(cpu_onednn_primitive_cache=0))
    with pytest.raises(ConfigError, match=r"field engine.cpu_onednn_primitive_cache = -1: Expected `int` >= 0"):
        load_config(ActorConfig, None, ["engine.cpu_onednn_primitive_cache=-1"])


def test_turn_seeds_differ_per_sample_and_depth_and_are_reproducible():
    seeds = {derive_turn_seed(7, s, d) for s in range(8) for d in range(1, 6)}
    assert len(seeds) == 40 and derive_turn_seed(7, 1, 2) == derive_turn_seed(7, 1, 2)
    assert derive_turn_seed(None, 1, 2) is None


def test_turn_budget_and_logprob_extraction():
    assert (
        turn_token_budget(10, 100, 64) == 64
        and turn_token_budget(90, 100, 64) == 10
        and turn_token_budget(120, 100, 64) == 0
    )

    class Lp:
        def __init__(self, v):
            self.logprob = v

    assert sampled_logprobs([5, 6], [{5: Lp(-0.1)}, {6: Lp(-2.0), 1: Lp(-0.5)}]) == [-0.1, -2.0]
    with pytest.raises(RuntimeError):
        sampled_logprobs([5, 6], [{5: Lp(-0.1)}])


def test_actor_config_loads_with_overrides_and_checks_ranges():
    config = load_config(ActorConfig, None, ["actor_id=a1", "engine.block_size=64", "max_inflight_items=4"])
    assert config.actor_id == "a1" and config.engine.block_size == 64 and config.resolved_actor_id() == "a1"
    assert load_config(ActorConfig).resolved_actor_id().startswith("actor-")
    for bad in (
        "max_inflight_items=0",
        "engine.block_size=20",
        "actor_id=a.b",
        "heartbeat_interval_s=0",
        "weights_fetch_timeout_s=0",
    ):
        with pytest.raises(ConfigError):
            load_config(ActorConfig, None, [bad])
