"""The one interface every multi-turn text environment implements.

A rollout is: ``obs0 = env.reset(task)`` (the prompt), then repeatedly the policy emits an
action text ending in one of ``env.stop_strings`` and ``env.step(action)`` answers with an
observation, ``done`` and ``reward``. Any actor can continue a rollout from any turn:
``env.snapshot()`` returns msgpack-able plain data and ``restore`` rebuilds exactly that state
in a fresh instance made by the same registry entry.

Everything is deterministic given the task and the action texts.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from protocol import TaskSpec


@dataclass(frozen=True)
class StepResult:
    observation: str
    done: bool
    reward: float


def solved(reward: float) -> bool:
    """An episode succeeds only with the full reward: partial credit (webshop's) is not success."""
    return reward >= 1.0


class EnvironmentError_(ValueError):
    """Bad input to an environment: unknown task, corrupt snapshot, malformed dataset line."""


class Environment(abc.ABC):
    """Base class; subclasses are registered in ``environments.registry``."""

    #: Registry name, e.g. "multihop".
    name: str = ""
    #: Strings that end an action; each is a special token in the embedded tokenizer so that
    #: stopping on it is one token.
    stop_strings: tuple[str, ...] = ()
    #: The tags this environment reads and writes; a model built for it makes each one token.
    special_tokens: tuple[str, ...] = ()
    #: Turn cap; reaching it ends the episode with reward 0. The class value is the env's
    #: upper bound; ``reset``/``restore`` narrow it on the instance to the task's own cap.
    max_turns: int = 4

    @abc.abstractmethod
    def reset(self, task: TaskSpec) -> str:
        """Start ``task``; returns the prompt text the policy sees first."""

    @abc.abstractmethod
    def step(self, action_text: str) -> StepResult:
        """Apply one action text. Malformed input gives an error observation, never an exception."""

    @abc.abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The full state as msgpack-able plain data."""

    @abc.abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild the state from ``snapshot()``; raises ``EnvironmentError_`` when corrupt."""

    @abc.abstractmethod
    def score(self) -> float:
        """Task-specific heuristic score of the current state in [0, 1] (used by TSR search)."""

    @abc.abstractmethod
    def expert_action(self) -> str:
        """A correct next action text from the current state (used for warm-start demos)."""
