"""Learner throughput, tree-packed against one row per path, on default-run-shaped trees.

    python -m bench.learner_throughput [--steps 4] [--threads 1]

Trees: 8 prompts per step; each tree has 4 root chains of up to 4 turns (~24 action and
~30 observation tokens per turn, prompt ~80 tokens), and nodes at depth 1-2 branch into
2-4 continuations half the time. Model: a random ~1.2 M-parameter Qwen3 (hidden 128,
4 layers, vocab 600), float32 on the CPU. "Path tokens" are what the unpacked layout
computes, so path tokens per second compares both layouts on the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig

from learner.config import LearnerConfig, ModelSection, OptimiserSection, TrainingSection
from learner.sequences import prepare_tree
from learner.trainer import Trainer
from tests.learner.models import build_tiny_qwen3
from tests.learner.trees import random_tree

RESULTS = Path(__file__).parent / "results" / "learner_throughput.json"
VOCAB = 600


def make_batches(seed: int, steps: int, trees_per_step: int) -> list[list]:
    rng = random.Random(seed)
    return [
        [
            random_tree(
                rng,
                f"s{s}t{i}",
                VOCAB,
                prompt_len=80,
                chains=4,
                max_turns=4,
                action_len=(18, 30),
                obs_len=(24, 36),
                branch_prob=0.5,
                branches=(2, 4),
            )
            for i in range(trees_per_step)
        ]
        for s in range(steps)
    ]


def run(model_dir: Path, batches: list[list], packing: bool) -> dict:
    config = LearnerConfig(
        model=ModelSection(model_dir=str(model_dir), packing=packing),
        optimiser=OptimiserSection(lr=1e-5),
        training=TrainingSection(staleness_eta=len(batches) + 1),
    )
    trainer = Trainer(config)
    trainer.train_step(batches[0])  # warm-up, not timed
    seconds, path_tokens, computed, trained = [], 0, 0, 0
    for batch in batches[1:]:
        start = time.perf_counter()
        metrics = trainer.train_step(batch)
        seconds.append(time.perf_counter() - start)
        trees = [prepare_tree(t, 0, 10**6) for t in batch]
        path_tokens += sum(t.path_token_counts()[2] for t in trees)
        computed += int(metrics["input_tokens"])
        trained += int(metrics["trained_tokens"])
    total = sum(seconds)
    return {
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "packing": packing,
        "timed_steps": len(seconds),
        "seconds_per_step_median": statistics.median(seconds),
        "path_tokens_per_s": path_tokens / total,
        "computed_tokens_per_s": computed / total,
        "trained_action_tokens_per_s": trained / total,
        "path_tokens_per_step": path_tokens / len(seconds),
        "computed_tokens_per_step": computed / len(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per layout (plus one warm-up)")
    parser.add_argument("--trees-per-step", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = make_batches(args.seed, args.steps + 1, args.trees_per_step)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_qwen3(Path(tmp) / "model", seed=args.seed, hidden=128, layers=4, mlp=512)
        packed = run(model_dir, batches, packing=True)
        unpacked = run(model_dir, batches, packing=False)
        unpacked.pop("parameters")
        config = AutoConfig.from_pretrained(model_dir)
    result = {
        "model": {
            "parameters": packed.pop("parameters"),
            "hidden": config.hidden_size,
            "layers": config.num_hidden_layers,
            "vocab": config.vocab_size,
        },
        "threads": args.threads,
        # Other processes share these cores; the load average says how much.
        "load_average_1m_at_end": os.getloadavg()[0],
        "trees_per_step": args.trees_per_step,
        "packed": packed,
        "unpacked": unpacked,
        "token_savings": 1 - packed["computed_tokens_per_step"] / unpacked["computed_tokens_per_step"],
        "speedup_path_tokens_per_s": packed["path_tokens_per_s"] / unpacked["path_tokens_per_s"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    for name in ("packed", "unpacked"):
        r = result[name]
        print(
            f"{name:9s} {r['path_tokens_per_s']:9.0f} path tok/s  {r['computed_tokens_per_s']:9.0f} computed tok/s  "
            f"{r['trained_action_tokens_per_s']:8.0f} trained tok/s  {r['seconds_per_step_median']:.2f} s/step"
        )
    print(f"token savings {result['token_savings']:.1%}, speed-up {result['speedup_path_tokens_per_s']:.2f}x")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
