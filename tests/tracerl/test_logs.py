"""Logged exceptions render plainly and without locals: logging runs on a role's event loop."""

import json
import logging

from tracerl.logs import configure_logging, get_logger


def _fail_with_a_large_local():
    large_local = ["x" * 100] * 10_000  # noqa: F841 - what a rich traceback with locals would print
    raise RuntimeError("engine died")


def test_an_exception_is_logged_as_a_plain_traceback_without_locals(tmp_path, capsys):
    configure_logging("probe", run_dir=tmp_path)
    try:
        _fail_with_a_large_local()
    except RuntimeError:
        get_logger("probe").exception("handler_failed", item="w1")
    for handler in logging.getLogger().handlers:
        handler.flush()
    console = capsys.readouterr().err
    assert "Traceback (most recent call last)" in console and "RuntimeError: engine died" in console
    assert "x" * 100 not in console and "╭" not in console  # no rich panel, no locals
    record = json.loads((tmp_path / "logs" / "probe.jsonl").read_text().splitlines()[-1])
    frames = record["exception"][0]["frames"]
    assert frames[-1]["name"] == "_fail_with_a_large_local"
    assert all(frame.get("locals") is None for frame in frames)
    logging.getLogger().handlers.clear()
