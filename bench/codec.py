"""What the wire codec costs per message: encode, and decode with validation, at production sizes.

    python -m bench.codec [--label NAME] [--messages 2000] [--repeats 5]

Three messages carry nearly every byte on the bus:

- ``TurnNode``: one turn, 300 generated tokens with their logprobs, 50 observation tokens,
  the prompt's 256 tokens (first turns carry them);
- ``CompletedTree``: a tree of 4 chains of 4 turns, each turn as above, over a 256-token prompt;
- ``WorkItem``: a branch from a depth-2 prefix (the prompt and two turns: 956 tokens).

Each is encoded with ``protocol.encode`` and decoded with ``protocol.decode(payload, type)``,
which validates every field and cross-field rule. Times are the median over ``--repeats`` of
``--messages`` distinct messages each, in wall and thread CPU microseconds per message (CPU
time tells a loaded machine from slow code).

Each run is recorded under its ``--label`` (default: the commit) in bench/results/codec.json, next to the labels
recorded before, so that two codecs measured by the same bench at two commits (the
hand-written layer, then msgspec) read side by side in codec.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.runs import RESULTS_DIR, write_results
from protocol import CompletedTree, SamplingSpec, TaskSpec, TreeNodeRecord, TurnNode, WorkItem, decode, encode

PROMPT_TOKENS = 256
ACTION_TOKENS = 300
OBSERVATION_TOKENS = 50
CHAINS, TURNS = 4, 4


def _tokens(seed: int, count: int) -> list[int]:
    return [(seed * 7919 + k * 31) % 151_000 for k in range(count)]


def _logprobs(seed: int, count: int) -> list[float]:
    return [-((seed + k) % 997) / 1024 for k in range(count)]


def _task(index: int) -> TaskSpec:
    return TaskSpec(env="multihop", task_id=f"train-{index}", params={"hops": 2, "question": "who directed it?"})


def turn_node(index: int) -> TurnNode:
    return TurnNode(
        run_id="bench",
        tree_id=f"tree-{index}",
        node_id=f"tree-{index}-w/s0/0/1",
        parent_id=None,
        work_id=f"tree-{index}-w",
        actor_id="actor-0",
        task=_task(index),
        depth=1,
        policy_version=3,
        prompt_token_ids=_tokens(index, PROMPT_TOKENS),
        action_token_ids=_tokens(index + 1, ACTION_TOKENS),
        behaviour_logprobs=_logprobs(index, ACTION_TOKENS),
        observation_token_ids=_tokens(index + 2, OBSERVATION_TOKENS),
        action_text="<think> the film was directed by someone </think> <search> director of the film </search>",
        observation_text="<information> Doc 1: ... Doc 2: ... </information>",
        env_snapshot=b"\x01" * 96,
        env_score=0.0,
        done=False,
        reward=None,
        created_at=1_800_000_000.0 + index,
    )


def completed_tree(index: int) -> CompletedTree:
    nodes = []
    for chain in range(CHAINS):
        for depth in range(1, TURNS + 1):
            seed = index * 100 + chain * 10 + depth
            nodes.append(
                TreeNodeRecord(
                    node_id=f"w/s{chain}/0/{depth}",
                    parent_id=None if depth == 1 else f"w/s{chain}/0/{depth - 1}",
                    depth=depth,
                    policy_version=3,
                    action_token_ids=_tokens(seed, ACTION_TOKENS),
                    behaviour_logprobs=_logprobs(seed, ACTION_TOKENS),
                    observation_token_ids=_tokens(seed + 1, OBSERVATION_TOKENS),
                    done=depth == TURNS,
                    reward=float(chain % 2) if depth == TURNS else None,
                )
            )
    return CompletedTree(
        shard=0,
        shard_count=1,
        run_id="bench",
        tree_id=f"tree-{index}",
        task=_task(index),
        strategy="trace",
        allocator_step=7,
        prompt_token_ids=_tokens(index, PROMPT_TOKENS),
        nodes=nodes,
        status="complete",
        budget_turns=CHAINS * TURNS,
        step_tree_count=8,
        created_at=1_800_000_000.0 + index,
    )


def work_item(index: int) -> WorkItem:
    return WorkItem(
        shard=0,
        run_id="bench",
        work_id=f"tree-{index}-b{index}",
        tree_id=f"tree-{index}",
        kind="branch",
        task=_task(index),
        num_samples=2,
        parent_id=f"tree-{index}-w/s0/0/2",
        prefix_depth=2,
        prefix_token_ids=_tokens(index, PROMPT_TOKENS + 2 * (ACTION_TOKENS + OBSERVATION_TOKENS)),
        env_snapshot=b"\x01" * 96,
        sampling=SamplingSpec(temperature=1.0, top_p=1.0, max_tokens_per_turn=ACTION_TOKENS, seed=index),
        max_turns=3,
        min_policy_version=2,
        issued_at=1_800_000_000.0 + index,
    )


BUILDERS: dict[str, Callable[[int], Any]] = {
    "TurnNode": turn_node,
    "CompletedTree": completed_tree,
    "WorkItem": work_item,
}


def _timed(work: Callable[[], object], repeats: int, count: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.thread_time()
        work()
        walls.append((time.perf_counter() - wall) / count * 1e6)
        cpus.append((time.thread_time() - cpu) / count * 1e6)
    return {"wall_us": statistics.median(walls), "cpu_us": statistics.median(cpus)}


def measure(name: str, count: int, repeats: int) -> dict[str, Any]:
    messages = [BUILDERS[name](i) for i in range(count)]
    cls = type(messages[0])
    payloads = [encode(m) for m in messages]
    assert decode(payloads[0], cls) == messages[0]
    gc.freeze()  # the messages held here are the bench's, not the codec's, garbage
    try:
        encoded = _timed(lambda: [encode(m) for m in messages], repeats, count)
        decoded = _timed(lambda: [decode(p, cls) for p in payloads], repeats, count)
    finally:
        gc.unfreeze()
    return {
        "bytes": statistics.mean(len(p) for p in payloads),
        "encode_us": encoded["wall_us"],
        "encode_cpu_us": encoded["cpu_us"],
        "decode_us": decoded["wall_us"],
        "decode_cpu_us": decoded["cpu_us"],
    }


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    labels = list(runs)
    lines = [
        "# Wire codec: encode, and decode with validation, per message",
        "",
        "`python -m bench.codec --label NAME` (`tracerl bench components` runs it); median of repeats, "
        "microseconds per message (CPU time in brackets).",
        "",
        "| message | codec | commit | bytes | encode µs | decode+validate µs |",
        "|---|---|---|---|---|---|",
    ]
    for name in BUILDERS:
        for label in labels:
            run = runs[label]
            r = run["messages"][name]
            encoded = f"{r['encode_us']:.1f} ({r['encode_cpu_us']:.1f})"
            decoded = f"{r['decode_us']:.1f} ({r['decode_cpu_us']:.1f})"
            lines.append(f"| {name} | {label} | {run['commit']} | {r['bytes']:.0f} | {encoded} | {decoded} |")
    if len(labels) >= 2:
        first, last = labels[0], labels[-1]
        lines += [
            "",
            f"CPU time of {last} over {first}:",
            "",
            "| message | encode | decode+validate |",
            "|---|---|---|",
        ]
        for name in BUILDERS:
            a, b = runs[first]["messages"][name], runs[last]["messages"][name]
            lines.append(
                f"| {name} | {b['encode_cpu_us'] / a['encode_cpu_us']:.2f}x | "
                f"{b['decode_cpu_us'] / a['decode_cpu_us']:.2f}x |"
            )
    lines += ["", "Machine load (1-minute average) before each run: "]
    lines.append(", ".join(f"{label} {run['machine']['load_average_1m_before']:.2f}" for label, run in runs.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="the codec measured, e.g. hand-written or msgspec (default: the commit)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    commit = _commit()
    label = args.label or commit
    run = {
        "commit": commit,
        "messages": {name: measure(name, args.messages, args.repeats) for name in BUILDERS},
        "args": {"messages": args.messages, "repeats": args.repeats},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m_before": load,
            "load_average_1m_after": os.getloadavg()[0],
        },
    }
    recorded_path = Path(RESULTS_DIR) / "codec.json"
    runs = json.loads(recorded_path.read_text())["runs"] if recorded_path.is_file() else {}
    runs = {**{k: v for k, v in runs.items() if k != label}, label: run}
    text = markdown(runs)
    print(text)
    write_results("codec", {"runs": runs}, text)


if __name__ == "__main__":
    main()
