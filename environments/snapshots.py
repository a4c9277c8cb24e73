"""Validation helpers shared by every environment's ``snapshot``/``restore``."""

from __future__ import annotations

from typing import Any

from protocol import TaskSpec
from tracerl.typed import SchemaError, from_plain, to_plain

from .base import EnvironmentError_


def require(condition: bool, message: str) -> None:
    if not condition:
        raise EnvironmentError_(f"corrupt snapshot: {message}")


def task_to_plain(task: TaskSpec) -> dict[str, Any]:
    return to_plain(task)


def task_from_plain(data: Any) -> TaskSpec:
    try:
        return from_plain(TaskSpec, data, "task")
    except SchemaError as err:
        raise EnvironmentError_(f"corrupt snapshot: {err}") from err
