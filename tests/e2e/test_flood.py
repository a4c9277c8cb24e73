"""`tracerl bench flood`, short: a real run (bus, allocator, two vLLM actors, learner) takes
2,000 malformed messages over its seven subjects, wrong-role operations with the actor's,
allocator's and learner's credentials, and publishes over the server's size limit, while it
trains. Every process must stay alive, each role must count exactly the rejects sent to the
subjects it consumes, and nothing from the flood may reach a tree."""

import json
import subprocess
import sys

import pytest

from bench.hostile import wrong_role_attempts
from protocol import Subjects

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.vllm]

MESSAGES = 2000
REPEATS = 5
# 2,000 messages over 7 subjects (nodes, shared work, 2 actors' own work, trees, weights,
# dlq): 285 each and one more for the first five, so 286 per consumed subject.
PER_CONSUMED_SUBJECT = 286


def test_a_flooded_run_survives_and_counts_every_reject(tmp_path, embedded_model_dir):
    results = tmp_path / "results"
    argv = [
        sys.executable,
        "-m",
        "tracerl",
        "bench",
        "flood",
        "--messages",
        str(MESSAGES),
        "--steps",
        "5",
        "--flood-after-step",
        "1",
        "--wrong-role-repeats",
        str(REPEATS),
        "--no-baseline",
        "--eval-tasks",
        "0",
        "--timeout-s",
        "300",
        "--work-dir",
        str(tmp_path),
        "--results-dir",
        str(results),
        "--set",
        f"model_dir={embedded_model_dir}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    report = (results / "flood.md").read_text() if (results / "flood.md").exists() else done.stdout[-4000:]
    assert done.returncode == 0, report + done.stderr[-3000:]
    result = json.loads((results / "flood.json").read_text())
    assert result["ok"] and result["failures"] == [], report
    run = result["flooded"]
    assert run["alive_after_flood"] == dict.fromkeys(["actor-0", "actor-1", "allocator", "bus", "learner"], True)
    assert all(alive for name, alive in run["alive_at_learner_end"].items() if name != "learner")
    # The bench stops the learner after its 5 steps; the step it is in then still ends.
    assert run["summary"]["steps"] >= 5 and run["exit_codes"]["learner"] == 0

    flood = run["flood"]
    assert flood["sent"]["messages"] == MESSAGES
    assert sum(sum(kinds.values()) for kinds in flood["sent"]["by_subject_kind"].values()) == MESSAGES
    checks = {c["role"]: c for c in flood["reject_checks"]}
    assert sorted(checks) == ["actors", "allocator", "learner"]
    for role, subjects in (("allocator", 1), ("learner", 1), ("actors", 3)):
        check = checks[role]
        assert check["sent"] == sum(check["counted"].values()) == subjects * PER_CONSUMED_SUBJECT, report
        assert check["counted"] == check["expected"], report
        # Every reason the codec has for this flood shows up; oversized ones are capped at 4 per subject.
        assert check["counted"]["oversized"] == 4 * subjects and check["counted"]["wrong_run"] > 0
    for actor, (own, counted) in flood["actor_own_subjects"].items():
        assert own == PER_CONSUMED_SUBJECT and counted >= own, actor

    attempts = len(wrong_role_attempts(Subjects("x")))
    violations = flood["sent"]["violations"]
    assert len(violations) == attempts
    assert [v["refused"] for v in violations] == [REPEATS] * attempts
    assert flood["sent"]["server_oversized_refused"] == flood["sent"]["server_oversized_sent"] == 3
    assert flood["flood_ids_in_trees"] == 0 and flood["nodes_from_flood_work"] == 0
    assert flood["nodes_unknown_tree"] == 0
