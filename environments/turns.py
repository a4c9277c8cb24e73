"""The turn bookkeeping every environment shares: the task being played, the turns used
against the cap, done and reward, and the common part of snapshot/restore. An environment
adds what one action does and what else its snapshots hold."""

from __future__ import annotations

import abc
from typing import Any, TypeVar

from protocol import TaskSpec

from . import tags
from .base import Environment, EnvironmentError_, StepResult
from .snapshots import episode_snapshot, read_episode_snapshot, require

EPISODE_OVER_OBSERVATION = tags.information("episode is over")

T = TypeVar("T")


class TurnEnvironment(Environment, abc.ABC):
    #: Whether rewards take values in [0, 1] (partial credit) rather than 0 or 1.
    graded_reward: bool = False

    def __init__(self) -> None:
        self._task: TaskSpec | None = None
        self._turn = 0
        self._done = False
        self._reward = 0.0

    # -- what each environment adds ---------------------------------------------------

    @abc.abstractmethod
    def _begin(self, task: TaskSpec) -> None:
        """Load ``task`` of this environment: narrow ``max_turns`` to the task's cap and put the
        environment's own state at its start; ``EnvironmentError_`` for a task it cannot serve."""

    @abc.abstractmethod
    def _act(self, action_text: str) -> str:
        """Apply one action of an unfinished episode (its turn already counted) and return the
        observation; an action that ends the episode sets ``_done`` and ``_reward``."""

    @abc.abstractmethod
    def _own_state(self) -> dict[str, Any]:
        """The snapshot fields beyond the common ones (msgpack-able plain data)."""

    @abc.abstractmethod
    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        """Check (``require``) and apply the fields of ``_own_state``, after ``_begin``."""

    # -- Environment -------------------------------------------------------------------

    def step(self, action_text: str) -> StepResult:
        self._started(self._task)
        if self._done:
            return StepResult(EPISODE_OVER_OBSERVATION, True, self._reward)
        self._turn += 1
        observation = self._act(action_text)
        if self._turn >= self.max_turns:
            self._done = True
        return StepResult(observation, self._done, self._reward)

    def snapshot(self) -> dict[str, Any]:
        if self._task is None:
            raise EnvironmentError_(f"{self.name}: snapshot() before reset()")
        return episode_snapshot(self.name, self._task, self._turn, self._done, self._reward, **self._own_state())

    def restore(self, state: dict[str, Any]) -> None:
        task, turn, done, reward = read_episode_snapshot(state, self.name, self.graded_reward)
        self._start(task)
        require(turn <= self.max_turns, f"snapshot turn {turn} exceeds max_turns {self.max_turns}")
        require(done or reward == 0.0, "snapshot has a reward on an unfinished episode")
        self._restore_own_state(state, turn, done, reward)
        self._turn, self._done, self._reward = turn, done, reward

    def _started(self, loaded: T | None) -> T:
        """``loaded`` (something ``_begin`` sets) once an episode has begun; before, an error."""
        if loaded is None:
            raise EnvironmentError_(f"{self.name}: reset() or restore() must come first")
        return loaded

    @property
    def turns_left(self) -> int:
        return self.max_turns - self._turn

    def _start(self, task: TaskSpec) -> None:
        """Begin ``task`` at its first turn (``reset`` and ``restore`` both come here)."""
        if task.env != self.name:
            raise EnvironmentError_(f"task {task.task_id!r} is for env {task.env!r}, not {self.name!r}")
        self._begin(task)
        self._task, self._turn, self._done, self._reward = task, 0, False, 0.0
