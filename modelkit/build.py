"""Building the embedded model directories (cached by content hash)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3ForCausalLM

from modelkit.architecture import RANDOM_TEST_ARCHITECTURE, ArchitectureConfig, qwen3_config
from modelkit.cache import cache_root, cached_directory, content_key
from modelkit.config import ModelBuildConfig
from modelkit.corpus import environment_corpus
from modelkit.export import save_model_dir
from modelkit.tokenizer import TokenizerSpec, environment_tags, train_tokenizer
from modelkit.warmstart import DemoText, demonstrations, encode_demos, train
from tracerl.logs import get_logger

#: Bump whenever the build procedure changes in a way the config does not capture.
BUILDER_VERSION = 1

log = get_logger(__name__)

ALL_ENVIRONMENTS = ("multihop", "frozenlake", "sokoban", "math")


def build_random_model(
    arch: ArchitectureConfig = RANDOM_TEST_ARCHITECTURE,
    seed: int = 0,
    cache_dir: str = "",
    tokenizer_vocab_size: int = 512,
) -> Path:
    """A tokenizer plus a randomly initialised tiny Qwen3: for tests of plumbing, not of learning."""
    spec = TokenizerSpec(vocab_size=tokenizer_vocab_size, tags=environment_tags())
    corpus = environment_corpus(ALL_ENVIRONMENTS, tasks_per_env=200, seed=seed)
    key = content_key(
        {"builder": BUILDER_VERSION, "kind": "random", "arch": arch, "tokenizer": spec, "seed": seed, "corpus": corpus}
    )

    def build(directory: Path) -> dict[str, Any]:
        started = time.monotonic()
        tokenizer = train_tokenizer(corpus, spec)
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(qwen3_config(arch, tokenizer)).float()
        save_model_dir(model, tokenizer, directory)
        return {
            "kind": "random",
            "seed": seed,
            "parameters": sum(p.numel() for p in model.parameters()),
            "build_seconds": round(time.monotonic() - started, 2),
        }

    path, built = cached_directory(cache_root(cache_dir), "random", key, build)
    log.info("random model ready", path=str(path), built_now=built)
    return path


def recipe_key(config: ModelBuildConfig) -> str:
    """The cache key of the embedded model ``config`` builds."""
    return content_key({"builder": BUILDER_VERSION, "kind": "embedded", **config.recipe()})


def build_embedded_model(config: ModelBuildConfig) -> Path:
    """The warm-started embedded model directory, built once per recipe and then reused."""
    key = recipe_key(config)
    root = cache_root(config.cache_dir)

    def build(directory: Path) -> dict[str, Any]:
        return _build_into(directory, config)

    log.info("embedded model requested", key=key, cache_root=str(root))
    path, built = cached_directory(root, "embedded", key, build)
    log.info("embedded model ready", path=str(path), built_now=built)
    return path


def _build_into(directory: Path, config: ModelBuildConfig) -> dict[str, Any]:
    started = time.monotonic()
    torch.set_num_threads(config.threads)
    demos = demonstrations(config.demos)
    log.info(
        "demonstrations generated",
        count=len(demos),
        seconds=round(time.monotonic() - started, 1),
        demo_success={
            env: round(_mean([d.reward for d in demos if d.env == env]), 3) for env in config.demos.environments
        },
    )
    # A tokenizer needs far fewer examples than the model; a few thousand cover the vocabulary.
    corpus = [text for demo in demos[:: max(1, len(demos) // 3000)] for text in _demo_texts(demo)]
    spec = TokenizerSpec(
        vocab_size=config.tokenizer_vocab_size,
        tags=environment_tags(config.demos.environments),
        whitespace=config.tokenizer_whitespace,
    )
    tokenizer = train_tokenizer(corpus, spec)
    encoded = encode_demos(tokenizer, demos, config.training.max_sequence_tokens)
    log.info(
        "demonstrations tokenised",
        kept=len(encoded),
        dropped=len(demos) - len(encoded),
        vocab=len(tokenizer),
        mean_tokens=round(_mean([len(e.token_ids) for e in encoded]), 1),
    )
    torch.manual_seed(config.training.seed)
    model = Qwen3ForCausalLM(qwen3_config(config.architecture, tokenizer)).float()
    parameters = sum(p.numel() for p in model.parameters())
    log.info("warm start begins", parameters=parameters, steps=config.training.steps)
    stats = train(
        model,
        encoded,
        tokenizer.pad_token_id,
        config.training,
        config.threads,
        progress=lambda row: log.info("warm start progress", **row),
    )
    save_model_dir(model, tokenizer, directory)
    return {
        "kind": "embedded",
        "recipe": config.recipe(),
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "demos": len(encoded),
        "build_seconds": round(time.monotonic() - started, 1),
        **stats,
    }


def _demo_texts(demo: DemoText) -> list[str]:
    return [demo.prompt, *(text for turn in demo.turns for text in turn)]


def _mean(values: list[float] | list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


def build_command(config_path: str | None, overrides: list[str]) -> int:
    """`tracerl model build`: build (or reuse) the embedded model and print its directory."""
    import sys

    from tracerl.config import ConfigError, load_config

    try:
        config = load_config(ModelBuildConfig, config_path, overrides)
    except ConfigError as err:
        print(f"tracerl model build: config error: {err}", file=sys.stderr)
        return 2
    return run_build(config)


def run_build(config: ModelBuildConfig) -> int:
    """The same command for an already loaded config (fits ``tracerl.cli.role_command``)."""
    import shutil
    import sys

    from modelkit.eval import evaluate_modes, format_table
    from tracerl.logs import configure_logging

    configure_logging("model-build", None, config.log.level, json_file=False)
    path = build_embedded_model(config)
    if config.output_dir:
        target = Path(config.output_dir)
        shutil.copytree(path, target, dirs_exist_ok=True)
        path = target
    if config.eval_tasks > 0:
        torch.set_num_threads(config.threads)
        for env_name in config.demos.environments:
            results = evaluate_modes(path, env_name, config.eval_tasks, backend="transformers")
            print(format_table(results), file=sys.stderr)
    print(path)
    return 0
