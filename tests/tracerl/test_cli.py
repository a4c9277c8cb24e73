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
