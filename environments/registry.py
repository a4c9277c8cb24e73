"""Environment names -> constructors and task generators.

A ``TaskSpec`` plus the environment name is all an actor needs: ``make_env(task.env)``
followed by ``reset(task)`` rebuilds the task anywhere (knowledge bases and levels are
regenerated from seeds carried in ``task.params``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from protocol import TaskSpec

from . import arith, bfcl, frozenlake, multihop, searchqa_jsonl, sokoban, toolcall, webshop
from .base import Environment, EnvironmentError_
from .splits import check_split
from .tags import ALL_TAGS


@dataclass(frozen=True)
class EnvEntry:
    factory: Callable[[], Environment]
    generate_tasks: Callable[..., list[TaskSpec]]


_REGISTRY: dict[str, EnvEntry] = {
    multihop.NAME: EnvEntry(multihop.MultihopEnvironment, multihop.generate_tasks),
    frozenlake.NAME: EnvEntry(frozenlake.FrozenLakeEnvironment, frozenlake.generate_tasks),
    sokoban.NAME: EnvEntry(sokoban.SokobanEnvironment, sokoban.generate_tasks),
    searchqa_jsonl.NAME: EnvEntry(searchqa_jsonl.SearchQAJsonlEnvironment, searchqa_jsonl.generate_tasks),
    arith.NAME: EnvEntry(arith.MathEnvironment, arith.generate_tasks),
    toolcall.NAME: EnvEntry(toolcall.ToolCallEnvironment, toolcall.generate_tasks),
    webshop.NAME: EnvEntry(webshop.WebShopEnvironment, webshop.generate_tasks),
    bfcl.NAME: EnvEntry(bfcl.BfclEnvironment, bfcl.generate_tasks),
}


def env_names() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> EnvEntry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise EnvironmentError_(f"unknown environment {name!r}; valid names: {', '.join(env_names())}")
    return entry


def make_env(name: str) -> Environment:
    return _entry(name).factory()


def env_special_tokens(names: Sequence[str]) -> tuple[str, ...]:
    """The tags the named environments use, in ``ALL_TAGS`` order: a model built for some
    environments gets exactly their tags, so adding an environment never changes it."""
    used = {tag for name in names for tag in make_env(name).special_tokens}
    return tuple(tag for tag in ALL_TAGS if tag in used)


def task_options(name: str) -> list[str]:
    """The keywords env ``name``'s task generator takes beyond split, count and seed: its
    difficulty knobs, and for the environments with real data the files to read."""
    parameters = inspect.signature(_entry(name).generate_tasks).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_task_options(name: str, options: Iterable[str]) -> None:
    """Refuse, before any task is generated, an option env ``name`` does not take."""
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"environment {name!r} takes no task option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(known) or 'none'}"
        )


def make_tasks(name: str, split: str, count: int, seed: int, **difficulty: object) -> list[TaskSpec]:
    """``count`` distinct tasks of env ``name``; train and held-out tasks never coincide.

    ``difficulty`` holds the env's own knobs (see each module's ``generate_tasks``); an
    unknown knob raises ``TypeError`` naming it.
    """
    entry = _entry(name)
    check_split(split)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return entry.generate_tasks(split, count, seed, **difficulty)
