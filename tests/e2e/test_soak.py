"""`tracerl bench soak`, short: the whole system (bus, learner, allocator, two vLLM actors) trains
for a few minutes while every role's memory and descriptors and the store are sampled, and no
series may grow faster, relative to its level, than a generous per-hour bound.

Only slopes relative to levels are judged, with bounds wide enough for a loaded machine (a
slow step shifts when memory settles, not whether it grows without end); nothing is timed.
"""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.vllm]

MINUTES = 4
WARMUP_MINUTES = 1.5
# Growth per hour as a multiple of the level. Minutes after the first step, memory still
# settles: on a 2-core machine at load 20-30, nats-server doubled in the first 40 s of
# training and then wobbled by 5 %, which read as 1.7-3.2x per hour over windows of 1.5-2
# minutes; the vLLM actors grew 0.5-0.7x and the allocator 0.5x. A leak of one descriptor
# or one weights blob per learner step (about 10 steps a minute) is 5x or more.
# An actor whose memory was still climbing to its twin's plateau 1.5-4 minutes in read as
# 5.5x by least squares in CI; the soak now judges the lasting Theil-Sen slope, which a
# plateau reached inside the window does not move.
MAX_RELATIVE_GROWTH_PER_HOUR = 4.0
ROLES = ("bus", "learner", "allocator", "actor-0", "actor-1")


# Start-up alone (two vLLM engines, the first learner step) took 261 s at load 29; the
# session's 900 s default would be close.
@pytest.mark.timeout(1800)
def test_a_short_soak_shows_no_growth_without_bound(tmp_path, embedded_model_dir):
    results = tmp_path / "results"
    argv = [
        *(sys.executable, "-m", "tracerl", "bench", "soak"),
        *("--minutes", str(MINUTES), "--interval-s", "5", "--warmup-minutes", str(WARMUP_MINUTES)),
        *("--max-relative-growth-per-hour", str(MAX_RELATIVE_GROWTH_PER_HOUR)),
        *("--work-dir", str(tmp_path), "--results-dir", str(results)),
        *("--set", f"model_dir={embedded_model_dir}"),
    ]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1700)
    report = (results / "soak.md").read_text() if (results / "soak.md").exists() else done.stdout[-4000:]
    assert done.returncode == 0, report + done.stderr[-3000:]
    result = json.loads((results / "soak.json").read_text())
    assert result["ok"] and result["failures"] == [], report
    judged = {s["series"]: s for s in result["series"] if s["judged_by"]}
    for role in ROLES:
        assert judged[f"rss_bytes.{role}"]["level"] > 0, report
        assert judged[f"open_fds.{role}"]["level"] > 0, report
    for stream in ("weights", "state", "work"):
        assert judged[f"stream_bytes.{stream}"]["judged_by"] == "slope", report
    for stream in ("nodes", "trees", "dead_letter"):
        assert judged[f"stream_bytes.{stream}"]["judged_by"] == "cap", report
    assert result["steps_after_warmup"] >= 1
