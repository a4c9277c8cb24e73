"""Runs at start-up in every interpreter with this directory on PYTHONPATH (``tracerl.end_with_parent``)."""

from tracerl.end_with_parent import on_interpreter_start

on_interpreter_start()
