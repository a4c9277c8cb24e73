"""`tracerl bench chaos`, short: a real run (bus, allocator, two vLLM actors, learner) with one
SIGKILL of an actor (replaced by a new one), of the learner and of the allocator, and a
nats-server restart, each a learner step apart. Nothing accepted may be lost or put in two
trees, no token trained past the staleness bound, and policy versions go strictly up."""

import json
import subprocess
import sys

import pytest

from bench.chaos import ACTIONS

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.vllm]


def test_a_run_under_chaos_loses_and_repeats_nothing(tmp_path, embedded_model_dir):
    results = tmp_path / "results"
    argv = [
        sys.executable,
        "-m",
        "tracerl",
        "bench",
        "chaos",
        "--seed",
        "0",
        "--first-step",
        "1",
        "--steps-between",
        "1",
        "--steps-after",
        "2",
        "--max-delay-s",
        "2",
        "--work-dir",
        str(tmp_path),
        "--results-dir",
        str(results),
        "--timeout-s",
        "400",
        "--set",
        f"model_dir={embedded_model_dir}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    report = (results / "chaos.md").read_text() if (results / "chaos.md").exists() else done.stdout[-4000:]
    assert done.returncode == 0, report + done.stderr[-3000:]
    result = json.loads((results / "chaos.json").read_text())
    assert result["ok"] and result["finished"], report
    assert sorted(e["action"] for e in result["events"]) == sorted(ACTIONS)
    r = result["reconciliation"]
    assert r["lost"] == [] and r["duplicated_in_trees"] == [] and r["phantom_in_trees"] == []
    assert r["version_violations"] == [] and r["trained_tokens_past_bound"] == 0
    assert r["accepted_nodes"] > 0 and r["nodes_in_trees"] > 0
