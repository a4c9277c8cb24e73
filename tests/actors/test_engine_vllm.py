"""A real vLLM engine: behaviour logprobs against transformers, across in-place reloads."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from actors.episode import EpisodeContext, collect_work_item
from protocol.messages import SamplingSpec

pytestmark = pytest.mark.vllm


def perturbed_copy(source: Path, target: Path, seed: int, scale: float = 0.05) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    noisy = {name: t + scale * torch.randn(t.shape, generator=generator, dtype=t.dtype) for name, t in tensors.items()}
    save_file(noisy, target / "model.safetensors", metadata={"format": "pt"})
    return target


def reference_logprobs(model, prompt_ids: list[int], generated_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + generated_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(generated_ids) - 1)
    return torch.log_softmax(logits[positions], dim=-1)[torch.arange(len(generated_ids)), torch.tensor(generated_ids)]


def load_reference(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def test_logprobs_match_transformers_after_inplace_reloads(engine_runner, engine_model_dir, tmp_path):
    engine = engine_runner.engine
    start_version = engine.policy_version
    versions = {start_version: engine.weights_dir}
    v1 = perturbed_copy(Path(engine.weights_dir), tmp_path / "v1", seed=1)
    v2 = perturbed_copy(v1, tmp_path / "v2", seed=2)
    sampling = SamplingSpec(temperature=1.0, top_p=1.0, max_tokens_per_turn=24)
    prompts = [[(7 * i + j) % 200 + 20 for j in range(30 + 5 * i)] for i in range(12)]

    async def workload():
        async def one(i: int):
            await asyncio.sleep(0.02 * i)
            return prompts[i], await engine.generate(prompts[i], sampling, seed=100 + i)

        tasks = [asyncio.create_task(one(i)) for i in range(len(prompts))]
        await asyncio.sleep(0.05)
        await engine.reload_weights(v1, start_version + 1)
        versions[start_version + 1] = str(v1)
        results = await asyncio.gather(*tasks)
        await engine.reload_weights(v2, start_version + 2)
        versions[start_version + 2] = str(v2)
        # Same prompt as an earlier turn: the prefix cache was reset, so nothing stale is reused.
        results.append((prompts[0], await engine.generate(prompts[0], sampling, seed=5)))
        return results

    results = engine_runner.run(workload())
    seen_versions = {g.policy_version for _, g in results}
    assert start_version + 2 in seen_versions and len(seen_versions) >= 2
    references = {v: load_reference(Path(d)) for v, d in versions.items() if v in seen_versions}
    old_reference = load_reference(Path(versions[start_version]))
    for prompt, generation in results:
        assert len(generation.token_ids) == len(generation.behaviour_logprobs) >= 1
        expected = reference_logprobs(references[generation.policy_version], prompt, generation.token_ids)
        got = torch.tensor(generation.behaviour_logprobs)
        assert (got - expected).abs().mean().item() < 1e-3, generation.policy_version
        if generation.policy_version != start_version:
            # The perturbation is large enough that serving the old weights would fail the check above.
            stale = reference_logprobs(old_reference, prompt, generation.token_ids)
            assert (got - stale).abs().mean().item() > 1e-2


def test_prefix_cache_reuses_a_shared_prefix(engine_runner):
    engine = engine_runner.engine
    prefix = [(3 * j) % 250 + 10 for j in range(200)]
    sampling = SamplingSpec(max_tokens_per_turn=4)

    async def two_turns():
        await engine.generate([*prefix, 11, 12], sampling, seed=1)
        return await engine.generate([*prefix, 13, 14, 15], sampling, seed=2)

    second = engine_runner.run(two_turns())
    # Whole 32-token blocks of the shared 200-token prefix: at least 6 blocks.
    assert second.num_cached_tokens >= 192


def test_multihop_root_and_branch_on_the_real_engine(engine_runner):
    from environments import make_env, make_tasks
    from protocol.messages import WorkItem

    engine = engine_runner.engine
    task = make_tasks("multihop", "train", 1, seed=3)[0]
    ctx = EpisodeContext(actor_id="t", max_model_len=engine.settings.max_model_len, sampling="s1")
    root = WorkItem(
        shard=0,
        run_id="t",
        work_id="r1",
        tree_id="T1",
        kind="root",
        task=task,
        num_samples=4,
        parent_id=None,
        prefix_depth=0,
        prefix_token_ids=[],
        env_snapshot=b"",
        sampling=SamplingSpec(max_tokens_per_turn=16, seed=1),
        max_turns=3,
        min_policy_version=0,
        issued_at=0.0,
    )
    nodes = engine_runner.run(collect_work_item(engine, lambda: make_env(task.env), root, ctx))
    assert sum(root.ends_chain(n) for n in nodes) == 4
    parent = next((n for n in nodes if not n.done and n.depth == 1), None)
    if parent is None:  # every chain ended on turn 1; branching needs a live prefix
        pytest.skip("random policy answered on every first turn")
    prefix = list(parent.prompt_token_ids) + list(parent.action_token_ids) + list(parent.observation_token_ids)
    branch = WorkItem(
        shard=0,
        run_id="t",
        work_id="b1",
        tree_id="T1",
        kind="branch",
        task=task,
        num_samples=3,
        parent_id=parent.node_id,
        prefix_depth=parent.depth,
        prefix_token_ids=prefix,
        env_snapshot=parent.env_snapshot,
        sampling=SamplingSpec(max_tokens_per_turn=16, seed=2),
        max_turns=2,
        min_policy_version=0,
        issued_at=0.0,
    )
    children = engine_runner.run(collect_work_item(engine, lambda: make_env(task.env), branch, ctx))
    assert sum(branch.ends_chain(n) for n in children) == 3
    assert {n.parent_id for n in children if n.depth == parent.depth + 1} == {parent.node_id}
    assert all(n.depth <= parent.depth + 2 and n.reward in (None, 0.0, 1.0) for n in children)


def _live_engine_process(process) -> bool:
    import psutil

    try:
        return process.name().startswith("VLLM") and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_engine_processes_start_with_a_bounded_onednn_kernel_cache(engine_runner):
    """Every engine process inherits the cap: the worker that runs the matmuls is where the
    unbounded default grew (README, "Soak")."""
    import os

    import psutil

    from actors.config import EngineSettings
    from actors.engine import cpu_engine_environment, on_gpu

    if on_gpu():
        pytest.skip("oneDNN's cache is a CPU engine setting")
    wanted = cpu_engine_environment(EngineSettings())
    assert wanted["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(EngineSettings().cpu_onednn_primitive_cache)
    # The shared engine's core is a direct child of this process and its worker a child of
    # the core; other tests' actors (and their engines) are further down or already gone.
    cores = [p for p in psutil.Process(os.getpid()).children() if _live_engine_process(p)]
    engine_processes = cores + [w for core in cores for w in core.children() if _live_engine_process(w)]
    checked = []
    for process in engine_processes:
        # Raw, not psutil.Process.environ(): vLLM renames its processes over the start of their
        # environment block (setproctitle), and psutil's parser stops at the blanked entries.
        try:
            entries = set(Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0"))
        except (ProcessLookupError, FileNotFoundError):
            continue  # an earlier test's engine that finished exiting after it was listed
        for variable, value in wanted.items():
            assert f"{variable}={value}".encode() in entries, (process.name(), variable)
        checked.append(process.name())
    assert "VLLM::Worker" in checked, checked
