"""Learner throughput: long tree contexts through each attention path, and whole training steps.

    python -m bench.learner_throughput [--lengths 1024 4096 16384] [--threads 1] [--steps 3]

Long contexts. One synthetic agent tree per length L (prompt L/8; two root chains of six
turns that branch in two at depths 2 and 4; random weights), packed into one forward of
L tokens, through:

* ``dense_forward`` / ``dense_train``: SDPA with the dense [L, L] tree mask (the
  reference), without gradients / forward + backward;
* ``flex_forward``: compiled FlexAttention with the tree block mask, without gradients;
* ``lean_train``: the chunked CPU training path, forward + backward, recomputing in
  backward what ``learner.model.lean_recompute`` says by default (``learner.recompute``);
  ``lean_train_recompute_none`` and ``lean_train_recompute_layers`` are the same path with
  the other choices (``--paths``).

Each (path, L) runs in a fresh child process, so that one measurement's allocations do
not hide another's. Time covers building the mask and the forward (and backward); the
first call is a warm-up (FlexAttention compiles there). Peak memory is the highest
resident set sampled every millisecond during the timed calls, minus the resident set
just before them, with glibc told to return large blocks to the system at once.

Model FLOPs count useful work only: 2 x (projection and MLP weights) per token, the
language-model head at the positions whose logits are kept, and 4 x head_dim x heads per
allowed (query, key) pair per layer; forward + backward is 3x the forward. The matmul
rate is a float32 [1024 x 1024] product timed in the same run with the same threads; each
child also times it right after its own calls, and records the CPU time of its calls, so
that on a machine shared with other work the share of the matmul rate can be read from CPU
time as well as from the wall clock.

``--section NAME`` measures only ``--paths`` at ``--lengths`` and merges each row, as it
finishes, into ``long_context.reruns.NAME`` of the results file, keeping the rest of it.

Training steps. The trainer on default-run-shaped trees (8 trees per step, ~1.1 M
parameters): packed with the dense mask, one tree per forward (the default); packed with
the lean path and every tree of a step in one forward; and one row per path.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from learner.config import (
    AttentionKind,
    LearnerConfig,
    ModelSection,
    OptimiserSection,
    RecomputeKind,
    TrainingSection,
)
from learner.packing import packed_batch, target_logprobs
from learner.recompute import recompute_in_backward
from learner.sequences import prepare_tree
from learner.trainer import Trainer
from learner.tree_attention import TREE_ATTENTION
from learner.tree_layout import dense_mask
from tests.learner.models import build_tiny_qwen3
from tests.learner.trees import node, random_tree, tree

RESULTS = Path(__file__).parent / "results" / "learner_throughput.json"
VOCAB = 600
#: Measured paths: (attention, with a backward, what the backward recomputes).
PATHS: dict[str, tuple[AttentionKind, bool, RecomputeKind]] = {
    "dense_forward": ("dense", False, "none"),
    "flex_forward": ("flex", False, "none"),
    "dense_train": ("dense", True, "none"),
    "lean_train": ("lean", True, ModelSection().lean_recompute),
    "lean_train_recompute_none": ("lean", True, "none"),
    "lean_train_recompute_layers": ("lean", True, "layers"),
}
DEFAULT_PATHS = ("dense_forward", "flex_forward", "dense_train", "lean_train")
#: The long-context model: head_dim 64, so attention runs on realistic head widths.
LONG_MODEL = {"hidden": 256, "layers": 4, "mlp": 1024}
STEP_MODEL = {"hidden": 128, "layers": 4, "mlp": 512}
#: A dense-mask run is skipped when its estimated memory passes this share of what is available.
DENSE_MEMORY_SHARE = 0.5


# ---------------------------------------------------------------------------- synthetic tree


def synthetic_tree(length: int, seed: int = 0):
    """An agent-like tree whose packed layout has about ``length`` tokens."""
    rng = random.Random(seed)
    shape: list[tuple[int | None, int]] = []  # (parent index, depth) in preorder

    def grow(parent: int | None, depth: int) -> None:
        shape.append((parent, depth))
        me = len(shape) - 1
        if depth < 6:
            for _ in range(2 if depth in (2, 4) else 1):
                grow(me, depth + 1)

    for _ in range(2):
        grow(None, 1)
    prompt = length // 8
    body = (length - prompt) // len(shape)
    nodes = []
    has_child = {p for p, _ in shape if p is not None}
    for i, (parent, depth) in enumerate(shape):
        leaf = i not in has_child
        action = body if leaf else body // 3
        tokens = [rng.randrange(1, VOCAB) for _ in range(body)]
        nodes.append(
            node(
                f"n{i}",
                None if parent is None else f"n{parent}",
                depth,
                tokens[:action],
                tokens[action:],
                reward=float(rng.random() < 0.5) if leaf else None,
                logprobs=[-1.0] * action,
            )
        )
    return prepare_tree(tree([rng.randrange(1, VOCAB) for _ in range(prompt)], nodes, f"synthetic-{length}"), 0, 0)


# ---------------------------------------------------------------------------- accounting


def model_flops(config, batch, train: bool) -> float:
    """Useful FLOPs of one forward (x3 with the backward) of ``batch``."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    projections = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * config.intermediate_size
    tokens = batch.input_tokens
    pairs = int(dense_mask(batch.layout).sum())
    kept = int(torch.unique(batch.target_predictor).numel())
    forward = 2 * projections * layers * tokens + 4 * head_dim * heads * pairs * layers + 2 * hidden * VOCAB * kept
    return float(forward * (3 if train else 1))


def matmul_flops_per_s(n: int = 1024, repeats: int = 10, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of the fastest of ``repeats`` [n x n] products by ``clock`` (wall or process CPU time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * n**3 / best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Highest resident set seen every ``interval_s`` while running."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


# ---------------------------------------------------------------------------- one measurement (child)


def measure(model_dir: str, path: str, length: int, threads: int, min_seconds: float) -> dict:
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=TREE_ATTENTION)
    attention, train, recompute = PATHS[path]
    model.train(train)
    model.requires_grad_(train)
    recompute_in_backward(model, recompute)
    batch = packed_batch(synthetic_tree(length))

    def once(batch=batch) -> None:
        if train:
            logprobs = target_logprobs(model, batch, attention)
            (-(logprobs * batch.target_weight).sum()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                target_logprobs(model, batch, attention)

    # Warm-up: FlexAttention compiles for this length; the others only need a short tree.
    once(batch if attention == "flex" else packed_batch(synthetic_tree(256)))
    baseline = _rss_bytes()
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    with PeakSampler() as sampler:
        while not seconds or (sum(seconds) < min_seconds and len(seconds) < 5):
            start, cpu_start = time.perf_counter(), time.process_time()
            once()
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    step, cpu_step = statistics.median(seconds), statistics.median(cpu_seconds)
    flops = model_flops(model.config, batch, train)
    return {
        "path": path,
        "recompute": recompute,
        "length": batch.input_tokens,
        "calls": len(seconds),
        "seconds_per_call": step,
        "cpu_seconds_per_call": cpu_step,
        "computed_tokens_per_s": batch.input_tokens / step,
        "peak_memory_bytes": sampler.peak - baseline,
        "model_flops_per_call": flops,
        "model_flops_per_s": flops / step,
        "model_flops_per_cpu_s": flops / cpu_step,
        "matmul_flops_per_s": matmul_flops_per_s(),
        "matmul_flops_per_cpu_s": matmul_flops_per_s(clock=time.process_time),
        "load_average_1m": os.getloadavg()[0],
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def dense_extrapolation(rows: list[dict], path: str, length: int) -> tuple[float, float] | None:
    """(peak bytes, seconds) of a dense run at ``length`` from the two longest shorter runs
    measured, fitted as a L + b L² (activations grow with L, the mask and the attention with
    L²; a negative coefficient from noisy timings is dropped); from one run, b L² alone.
    None before any measurement."""
    done = sorted(
        (r for r in rows if r["path"] == path and "skipped" not in r and r["length"] < length),
        key=lambda r: r["length"],
    )
    if not done:
        return None

    def fit(key: str) -> float:
        if len(done) == 1:
            return done[0][key] * (length / done[0]["length"]) ** 2
        (x1, y1), (x2, y2) = ((r["length"], r[key]) for r in done[-2:])
        quadratic = (y2 / x2 - y1 / x1) / (x2 - x1)
        linear = y1 / x1 - quadratic * x1
        if quadratic < 0 or linear < 0:
            return done[-1][key] * (length / done[-1]["length"]) ** (2 if quadratic >= 0 else 1)
        return linear * length + quadratic * length**2

    return fit("peak_memory_bytes"), fit("seconds_per_call")


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(model_dir: Path, path: str, length: int, threads: int, min_seconds: float, timeout_s: float) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, "-m", "bench.learner_throughput", "--child", str(model_dir), path, str(length)]
    command += ["--threads", str(threads), "--min-seconds", str(min_seconds)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"path": path, "length": length, "skipped": f"did not finish within {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"path": path, "length": length, "skipped": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def long_context(
    lengths: list[int],
    paths: list[str],
    threads: int,
    min_seconds: float,
    timeout_s: float,
    workdir: Path,
    on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> dict:
    """Each of ``paths`` at each of ``lengths``, one child at a time; ``on_row`` sees the rows so far after each."""
    model_dir = build_tiny_qwen3(workdir / "long", seed=0, **LONG_MODEL)
    config = AutoConfig.from_pretrained(model_dir)
    rows: list[dict[str, Any]] = []
    for length in lengths:
        for path in paths:
            estimate = dense_extrapolation(rows, path, length) if path.startswith("dense") else None
            if estimate is not None:
                need, seconds = estimate
                reason = ""
                if need > DENSE_MEMORY_SHARE * available_bytes():
                    reason = f"needs about {need / 2**30:.1f} GiB, more than {DENSE_MEMORY_SHARE:.0%} of the "
                    reason += f"{available_bytes() / 2**30:.1f} GiB available"
                elif seconds > timeout_s:
                    reason = f"takes about {seconds:.0f} s per call, more than the {timeout_s:.0f} s limit"
                if reason:
                    rows.append(
                        {
                            "path": path,
                            "length": length,
                            "skipped": f"{reason} (fitted to the shorter runs)",
                            "estimated_peak_memory_bytes": need,
                            "estimated_seconds_per_call": seconds,
                        }
                    )
                    print(f"{path:14s} L={length:6d} skipped: {rows[-1]['skipped']}", flush=True)
                    on_row(rows)
                    continue
            row = run_child(model_dir, path, length, threads, min_seconds, timeout_s)
            rows.append(row)
            on_row(rows)
            if "skipped" in row:
                print(f"{path:14s} L={length:6d} skipped: {row['skipped']}", flush=True)
            else:
                print(
                    f"{path:27s} L={row['length']:6d} {row['computed_tokens_per_s']:9.0f} tok/s  "
                    f"{row['peak_memory_bytes'] / 2**20:8.1f} MiB peak  {row['model_flops_per_s'] / 1e9:6.2f} GFLOP/s",
                    flush=True,
                )
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return {
        "model": {
            "parameters": params,
            "hidden": config.hidden_size,
            "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            "vocab": config.vocab_size,
        },
        "runs": rows,
    }


#: (lean path, the dense reference it is compared with).
COMPARISONS = (
    ("flex_forward", "dense_forward"),
    *((path, "dense_train") for path in PATHS if path.startswith("lean_train")),
)


def summarise(runs: list[dict], matmul_rate: float) -> dict:
    """Per length: speed-ups and memory ratios of the lean paths over the dense reference.

    A row that timed the matmul itself is set against its own rate (and, where it recorded
    CPU time, also against the matmul's rate by CPU time); older rows against ``matmul_rate``.
    """
    by = {(r["path"], r["length"]): r for r in runs if "skipped" not in r}
    summary = {}
    for length in sorted({r["length"] for r in runs}):
        entry = {}
        for path in PATHS:
            if (path, length) in by:
                row = by[path, length]
                entry[f"{path}_share_of_matmul_rate"] = row["model_flops_per_s"] / row.get(
                    "matmul_flops_per_s", matmul_rate
                )
                if "model_flops_per_cpu_s" in row:
                    entry[f"{path}_share_of_matmul_rate_by_cpu_time"] = (
                        row["model_flops_per_cpu_s"] / row["matmul_flops_per_cpu_s"]
                    )
        for lean, dense in COMPARISONS:
            if (lean, length) in by and (dense, length) in by:
                a, b = by[lean, length], by[dense, length]
                entry[f"{lean}_speedup"] = a["computed_tokens_per_s"] / b["computed_tokens_per_s"]
                entry[f"{dense}_over_{lean}_peak_memory"] = b["peak_memory_bytes"] / max(a["peak_memory_bytes"], 1)
                if "cpu_seconds_per_call" in a and "cpu_seconds_per_call" in b:
                    entry[f"{lean}_speedup_by_cpu_time"] = b["cpu_seconds_per_call"] / a["cpu_seconds_per_call"]
        summary[str(length)] = entry
    return summary


# ---------------------------------------------------------------------------- training steps


def step_batches(seed: int, steps: int, trees_per_step: int) -> list[list]:
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


def run_steps(model_dir: Path, batches: list[list], model: ModelSection) -> dict:
    config = LearnerConfig(
        model=model,
        optimiser=OptimiserSection(lr=1e-5),
        training=TrainingSection(staleness_eta=len(batches) + 1),
    )
    trainer = Trainer(config)
    trainer.train_step(batches[0])  # warm-up, not timed
    seconds, path_tokens, computed, trained, forwards = [], 0, 0, 0, 0
    for batch in batches[1:]:
        start = time.perf_counter()
        metrics = trainer.train_step(batch)
        seconds.append(time.perf_counter() - start)
        trees = [prepare_tree(t, 0, 10**6) for t in batch]
        path_tokens += sum(t.path_token_counts()[2] for t in trees)
        computed += int(metrics["input_tokens"])
        trained += int(metrics["trained_tokens"])
        forwards += int(metrics["forwards"])
    total = sum(seconds)
    return {
        "packing": model.packing,
        "attention": model.attention,
        "max_tokens_per_forward": model.max_tokens_per_forward,
        "timed_steps": len(seconds),
        "forwards_per_step": forwards / len(seconds),
        "seconds_per_step_median": statistics.median(seconds),
        "path_tokens_per_s": path_tokens / total,
        "computed_tokens_per_s": computed / total,
        "trained_action_tokens_per_s": trained / total,
        "path_tokens_per_step": path_tokens / len(seconds),
        "computed_tokens_per_step": computed / len(seconds),
    }


def training_steps(steps: int, trees_per_step: int, seed: int, workdir: Path) -> dict:
    batches = step_batches(seed, steps + 1, trees_per_step)
    model_dir = build_tiny_qwen3(workdir / "steps", seed=seed, **STEP_MODEL)
    base = ModelSection(model_dir=str(model_dir))
    layouts = {
        "packed_dense": base,
        "packed_lean_one_forward": ModelSection(
            model_dir=str(model_dir), attention="lean", max_tokens_per_forward=16384
        ),
        "unpacked": ModelSection(model_dir=str(model_dir), packing=False),
    }
    out: dict[str, Any] = {}
    for name, section in layouts.items():
        out[name] = run_steps(model_dir, batches, section)
        r = out[name]
        print(
            f"{name:24s} {r['path_tokens_per_s']:8.0f} path tok/s  {r['computed_tokens_per_s']:8.0f} computed tok/s  "
            f"{r['seconds_per_step_median']:.2f} s/step",
            flush=True,
        )
    config = AutoConfig.from_pretrained(model_dir)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    out["model"] = {"parameters": params, "hidden": config.hidden_size, "layers": config.num_hidden_layers}
    out["trees_per_step"] = trees_per_step
    return out


# ---------------------------------------------------------------------------- main


def rerun_section(args: argparse.Namespace) -> None:
    """Measure ``args.paths`` at ``args.lengths`` into ``long_context.reruns[args.section]``, row by row.

    Rows the section already holds for other (path, length) pairs stay; new rows carry the
    commit they were measured at. With ``args.reference``, the summary also compares with
    that earlier section's rows for pairs the section has not measured (listed apart, as
    ``reference_runs``).
    """
    results = json.loads(RESULTS.read_text())
    reruns = results["long_context"].setdefault("reruns", {})
    earlier = reruns.get(args.section, {}).get("runs", [])
    reference = _section_runs(results, args.reference) if args.reference else []
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=RESULTS.parent
    ).stdout.strip()
    started = time.time()

    def record(rows: list[dict]) -> None:
        new = [{**row, "commit": commit} for row in rows]
        fresh = {(r["path"], r["length"]) for r in new}
        runs = [r for r in earlier if (r["path"], r["length"]) not in fresh] + new
        measured = {(r["path"], r["length"]) for r in runs if "skipped" not in r}
        borrowed = [
            {**r, "from_section": args.reference}
            for r in reference
            if "skipped" not in r and (r["path"], r["length"]) not in measured
        ]
        reruns[args.section] = {
            "note": args.note,
            "torch": torch.__version__,
            "threads": args.threads,
            "wall_seconds": time.time() - started,
            "runs": runs,
            "reference_runs": borrowed,
            # Rows measured here carry the matmul rate their own child timed; borrowed rows may not.
            "summary": summarise(runs + borrowed, results["matmul_flops_per_s"]["mean"]),
        }
        RESULTS.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        long_context(args.lengths, args.paths, args.threads, args.min_seconds, args.timeout_s, Path(tmp), record)
    print(json.dumps(reruns[args.section]["summary"], indent=2))
    print(f"wrote {RESULTS} (long_context.reruns.{args.section})")


def _section_runs(results: dict, name: str) -> list[dict]:
    """The rows of ``long_context[name]`` or ``long_context.reruns[name]``."""
    long = results["long_context"]
    section = long.get(name) or long.get("reruns", {}).get(name)
    if not section:
        raise SystemExit(f"no section {name!r} in {RESULTS}")
    return list(section["runs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed calls per measurement last at least this")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="limit per (path, length) measurement")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per layout (plus one warm-up)")
    parser.add_argument("--trees-per-step", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(DEFAULT_PATHS))
    parser.add_argument(
        "--section", help="measure only --paths at --lengths into long_context.reruns.SECTION of the results file"
    )
    parser.add_argument("--note", default="", help="why the --section was measured, kept with it")
    parser.add_argument("--reference", help="with --section: an earlier section whose rows fill the comparisons")
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "PATH", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, path, length = args.child
        print(json.dumps(measure(model_dir, path, int(length), args.threads, args.min_seconds)))
        return
    if args.section:
        rerun_section(args)
        return

    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        matmul_before = matmul_flops_per_s()
        print(f"matmul {matmul_before / 1e9:.1f} GFLOP/s", flush=True)
        long = long_context(args.lengths, args.paths, args.threads, args.min_seconds, args.timeout_s, Path(tmp))
        matmul_after = matmul_flops_per_s()
        steps = training_steps(args.steps, args.trees_per_step, args.seed, Path(tmp)) if args.steps else {}
    matmul_rate = (matmul_before + matmul_after) / 2
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "wall_seconds": time.time() - started,
        # Other processes share these cores; the load average says how much.
        "load_average_1m_at_end": os.getloadavg()[0],
        "matmul_flops_per_s": {"before": matmul_before, "after": matmul_after, "mean": matmul_rate},
        "long_context": {**long, "summary": summarise(long["runs"], matmul_rate)},
        "training_steps": steps,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["long_context"]["summary"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
