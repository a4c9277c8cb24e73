"""`tracerl bench scale`, tiny: the real nats-server and allocator fed by two simulated actors
(the real actor service over an engine with no model) and a simulated learner. The wire must
carry nodes to the allocator, trees to the learner and new weights back to the actors."""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.nats]


@pytest.mark.timeout(900)
def test_two_simulated_actors_drive_the_real_allocator(tmp_path, embedded_model_dir):
    results = tmp_path / "results"
    argv = [
        *(sys.executable, "-m", "tracerl", "bench", "scale"),
        *("--actors", "2", "--seconds", "8", "--warmup-s", "4", "--turn-seconds", "0.2"),
        *("--work-dir", str(tmp_path), "--results-dir", str(results)),
        *("--set", f"model_dir={embedded_model_dir}"),
    ]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((results / "scale.json").read_text())
    assert payload["failures"] == {}
    (point,) = payload["points"]
    assert point["actors"] == 2
    assert point["nodes_per_s"] > 0
    assert point["schedule_cpu_p99_ms"] >= 0 and point["allocator_cpu_ms_per_node"] > 0
    assert set(point["cores_busy"]) == {"allocator", "nats_server", "actor_hosts", "learner_sim"}
    run_dir = tmp_path / "scale-2"
    # Every simulated actor loaded a version the simulated learner published after the first.
    loaded = {}
    for path in (run_dir / "metrics").glob("actor-sim-*.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        loaded[path.stem] = max(r.get("weights_loaded", 0) for r in records)
    assert len(loaded) == 2 and all(count >= 1 for count in loaded.values()), loaded
    assert "| 2 |" in (results / "scale.md").read_text()
