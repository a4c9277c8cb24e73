"""The `tracerl` entry points as a user starts them."""

import re
import subprocess
import sys

import pytest

ROLE_COMMANDS = {"bus", "actor", "allocator", "learner", "up", "eval", "model", "report", "bench"}


@pytest.mark.parametrize("module", ["tracerl", "tracerl.cli"])
def test_help_lists_every_role_command(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands", 1)[1]
    listed = set(re.findall(r"^[^\w\s] ([a-z]+)\s", commands, flags=re.MULTILINE))  # a row of the box
    assert listed == ROLE_COMMANDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schedule", "sometimes"], "schedule must be one of"),
        (["--seeds", "3"], "more than 1 only with --schedule random"),
        (["--schedule", "random", "--faults", "0"], "faults must be >= 1"),
        (["--actions", "stall_actor"], "unknown chaos actions"),
    ],
)
def test_bench_chaos_refuses_a_bad_schedule_before_starting_anything(args, message, tmp_path):
    argv = [sys.executable, "-m", "tracerl", "bench", "chaos", *args, "--work-dir", str(tmp_path)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []
