"""`tracerl bench chaos`, short: a real run (bus, allocator, two vLLM actors, learner) with one
SIGKILL of an actor (replaced by a new one), of the learner and of the allocator, and a
nats-server restart, each a learner step apart. Nothing accepted may be lost or put in two
trees, no token trained past the staleness bound, and policy versions go strictly up. And a short
random schedule, its faults in overlapping pairs: every tree is also trained once or still waits
for the next learner."""

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


def test_a_random_schedule_with_overlapping_faults_loses_and_repeats_nothing(tmp_path, embedded_model_dir):
    """Four faults drawn by seed 4: a bus restart while the store fills, then an actor stalled past ack_wait
    while the other is killed. Whatever the machine's load, only the outcome is checked: every node and tree
    accounted for, none trained twice."""
    from bench.chaos import RANDOM_ACTIONS, random_schedule, runnable_actions

    results = tmp_path / "results"
    argv = [
        sys.executable,
        "-m",
        "tracerl",
        "bench",
        "chaos",
        "--schedule",
        "random",
        "--faults",
        "4",
        "--seed",
        "4",
        "--first-step",
        "1",
        "--steps-between",
        "1",
        "--steps-after",
        "1",
        "--max-delay-s",
        "1",
        "--work-dir",
        str(tmp_path),
        "--results-dir",
        str(results),
        "--timeout-s",
        "500",
        "--set",
        f"model_dir={embedded_model_dir}",
    ]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=700)
    report = (
        (results / "chaos-random.md").read_text() if (results / "chaos-random.md").exists() else done.stdout[-4000:]
    )
    assert done.returncode == 0, report + done.stderr[-3000:]
    recorded = json.loads((results / "chaos-random.json").read_text())
    assert recorded["ok"] and recorded["seeds"] == [4]
    (run,) = recorded["runs"]
    assert run["finished"] and run["waiting_read"], report
    # The drawn schedule, every fault fired, in its waves; a pair shares one.
    planned = random_schedule(4, 4, runnable_actions(RANDOM_ACTIONS, clustered=False, store_limited=True)[0], 1, 1, 1)
    assert run["planned"] == [list(w.actions) for w in planned]
    assert [[e["action"] for e in run["events"] if e["wave"] == k] for k in range(1, len(planned) + 1)] == run[
        "planned"
    ]
    assert any(len(w) == 2 for w in run["planned"])
    assert any("kill_cluster_node left out" in note for note in run["notes"])
    # The lasting faults ended: the stalled actor was continued, the filler deleted.
    lasting = {e["action"]: e for e in run["events"] if e["action"] in ("stall_actor", "fill_store")}
    assert lasting["stall_actor"]["ended_s"] is not None and "SIGCONT" in lasting["stall_actor"]["detail"]
    assert lasting["fill_store"]["ended_s"] is not None and "NOT deleted" not in lasting["fill_store"]["detail"]
    r, t = run["reconciliation"], run["training"]
    assert r["lost"] == [] and r["duplicated_in_trees"] == [] and r["phantom_in_trees"] == []
    assert r["version_violations"] == [] and r["trained_tokens_past_bound"] == 0
    assert r["accepted_nodes"] > 0 and r["nodes_in_trees"] > 0
    assert t["lost"] == [] and t["trained_twice"] == [] and t["unknown_trained"] == []
    assert t["trained"] > 0 and t["trained"] + t["skipped"] + t["waiting"] == t["distinct_trees"]
