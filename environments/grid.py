"""Turn logic shared by the text grid puzzles (FrozenLake, Sokoban).

Each puzzle supplies a pure core: an immutable level, a hashable dynamic state (a tuple of
ints), a transition function, a terminal status and a renderer. This module adds what is
common: tolerant move parsing, the turn cap, breadth-first solving (for expert actions and
the score), and snapshot/restore.

The action format is the shared tag format: ``<think> go Down </think> <answer> Down </answer>``.
Bare words are accepted too ("down", "D"), case-insensitively.
"""

from __future__ import annotations

import abc
import hashlib
import random
import string
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Literal

from protocol import TaskSpec

from . import tags
from .base import Environment, EnvironmentError_, StepResult
from .snapshots import episode_snapshot, read_episode_snapshot, require
from .splits import split_of_content

MOVES: tuple[str, ...] = ("Up", "Down", "Left", "Right")
DELTAS: dict[str, tuple[int, int]] = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}
_MOVE_WORDS = {w: m for m in MOVES for w in (m.lower(), m[0].lower())}
_STRIP = str.maketrans("", "", string.punctuation)

#: Upper bound on any grid task's turn cap; keeps episodes learnable for a tiny model.
MAX_TURNS_CAP = 8
#: Solver depth for expert actions outside the turn budget.
EXPERT_SEARCH_DEPTH = 40

Status = Literal["alive", "won", "lost"]
State = tuple[int, ...]


def parse_move(action_text: str) -> str | None:
    """``Up``/``Down``/``Left``/``Right`` from a tagged or bare action, or ``None``."""
    parsed = tags.parse_action(action_text)
    if parsed is not None:
        if parsed.kind != "answer":
            return None
        content = parsed.content
    elif any(tag in action_text for tag in tags.ALL_TAGS):
        return None
    else:
        content = action_text
    if len(content) > 32:
        return None
    return _MOVE_WORDS.get(content.translate(_STRIP).strip().lower())


def move_turn(move: str, reason: str = "go") -> str:
    return f"{tags.think(f'{reason} {move}')} {tags.answer(move)}"


def bfs_solve(
    start: State, transition: Callable[[State, str], State], status: Callable[[State], Status], depth_limit: int
) -> tuple[str, ...] | None:
    """A shortest move sequence from ``start`` to a won state within ``depth_limit``, or ``None``.

    Moves are tried in ``MOVES`` order, so the returned solution is deterministic.
    """
    if status(start) == "won":
        return ()
    parents: dict[Hashable, tuple[State, str] | None] = {start: None}
    frontier: deque[tuple[State, int]] = deque([(start, 0)])
    while frontier:
        state, depth = frontier.popleft()
        if depth >= depth_limit:
            continue
        for move in MOVES:
            nxt = transition(state, move)
            if nxt in parents:
                continue
            parents[nxt] = (state, move)
            outcome = status(nxt)
            if outcome == "won":
                path = [move]
                cursor = state
                while (link := parents[cursor]) is not None:
                    cursor, step_move = link
                    path.append(step_move)
                return tuple(reversed(path))
            if outcome == "alive":
                frontier.append((nxt, depth + 1))
    return None


class GridEnvironment(Environment, abc.ABC):
    stop_strings = tags.ACTION_STOP_STRINGS
    special_tokens = tags.SEARCH_R1_TAGS
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        self._task: TaskSpec | None = None
        self._level: Any = None
        self._state: State = ()
        self._turn = 0
        self._done = False
        self._reward = 0.0
        self._initial_solution_length = 1

    # -- the puzzle's pure core --------------------------------------------------------

    @abc.abstractmethod
    def _parse_level(self, params: dict[str, Any]) -> tuple[Any, State, int]:
        """Task params -> (level, initial state, max_turns); ``EnvironmentError_`` if bad."""

    @abc.abstractmethod
    def _transition(self, state: State, move: str) -> State: ...

    @abc.abstractmethod
    def _status(self, state: State) -> Status: ...

    @abc.abstractmethod
    def _render(self, state: State) -> str: ...

    @abc.abstractmethod
    def _valid_state(self, state: State) -> bool: ...

    @abc.abstractmethod
    def _solve(self, state: State, depth_limit: int) -> tuple[str, ...] | None:
        """Cached ``bfs_solve`` over this level."""

    @abc.abstractmethod
    def _instruction(self) -> str: ...

    @abc.abstractmethod
    def _move_reason(self, state: State, move: str) -> str:
        """A one-word thought for ``move`` ("go", "push")."""

    # -- Environment -------------------------------------------------------------------

    def reset(self, task: TaskSpec) -> str:
        self._begin(task)
        return f"{self._instruction()}\n{self._render(self._state)}"

    def step(self, action_text: str) -> StepResult:
        if self._task is None:
            raise EnvironmentError_(f"{self.name}: reset() or restore() must come first")
        if self._done:
            return StepResult(tags.information("episode is over"), True, self._reward)
        self._turn += 1
        move = parse_move(action_text)
        if move is None:
            observation = tags.information(f"invalid action\n{self._render(self._state)}")
        else:
            self._state = self._transition(self._state, move)
            outcome = self._status(self._state)
            if outcome != "alive":
                self._done = True
                self._reward = 1.0 if outcome == "won" else 0.0
            observation = tags.information(self._render(self._state))
        if self._turn >= self.max_turns:
            self._done = True
        return StepResult(observation, self._done, self._reward)

    def snapshot(self) -> dict[str, Any]:
        if self._task is None:
            raise EnvironmentError_(f"{self.name}: snapshot() before reset()")
        return episode_snapshot(self.name, self._task, self._turn, self._done, self._reward, state=list(self._state))

    def restore(self, state: dict[str, Any]) -> None:
        task, turn, done, reward = read_episode_snapshot(state, self.name)
        cells = state.get("state")
        require(isinstance(cells, list) and all(type(v) is int for v in cells), "snapshot state must be a list of ints")
        self._begin(task)
        require(turn <= self.max_turns, f"snapshot turn {turn} exceeds max_turns {self.max_turns}")
        require(self._valid_state(tuple(cells)), f"snapshot state {cells!r} is impossible on this level")
        outcome = self._status(tuple(cells))
        require(outcome == "alive" or done, "snapshot is in a terminal position but not done")
        require(reward == (1 if outcome == "won" else 0), "snapshot reward disagrees with the position")
        self._state, self._turn, self._done, self._reward = tuple(cells), turn, done, float(reward)

    def score(self) -> float:
        """1 - (optimal moves left / optimal moves at the start); 0 when the goal is out of reach
        within the turns left (a dead state)."""
        if self._done:
            return self._reward
        solution = self._solve(self._state, self.max_turns - self._turn)
        if solution is None:
            return 0.0
        return max(0.0, 1.0 - len(solution) / self._initial_solution_length)

    def expert_action(self) -> str:
        solution = self._solve(self._state, EXPERT_SEARCH_DEPTH)
        # From a dead position every move is equally hopeless; a fixed one keeps demos deterministic.
        move = solution[0] if solution else MOVES[0]
        return move_turn(move, self._move_reason(self._state, move))

    # -- helpers -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def level(self) -> Any:
        return self._level

    @property
    def turns_left(self) -> int:
        return self.max_turns - self._turn

    def move_reason(self, move: str) -> str:
        """The one-word thought that goes with playing ``move`` from the current state."""
        return self._move_reason(self._state, move)

    def _begin(self, task: TaskSpec) -> None:
        if task.env != self.name:
            raise EnvironmentError_(f"task {task.task_id!r} is for env {task.env!r}, not {self.name!r}")
        level, initial, max_turns = self._parse_level(task.params)
        self._task, self._level, self.max_turns = task, level, max_turns
        self._state, self._turn, self._done, self._reward = initial, 0, False, 0.0
        solution = self._solve(initial, EXPERT_SEARCH_DEPTH)
        if not solution:
            raise EnvironmentError_(f"{self.name} task {task.task_id!r} has no solution")
        self._initial_solution_length = len(solution)


def generate_levels(
    name: str,
    split: str,
    count: int,
    seed: int,
    *,
    min_solution: int,
    slack: int,
    draw: Callable[[random.Random], tuple[list[str], Callable[[], list | None]]],
) -> list[TaskSpec]:
    """Distinct solvable levels of ``split``: ``draw(rng)`` gives a level's rows and a solver.

    The split is decided by the level's content before solving, since solving costs more.
    The turn cap is the optimal solution length plus ``slack`` (at most ``MAX_TURNS_CAP``).
    """
    rng = random.Random(f"{name}:{split}:{seed}")
    tasks: dict[str, TaskSpec] = {}
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"could not generate {count} distinct {name} levels; loosen the knobs")
        rows, solve_level = draw(rng)
        content = "/".join(rows)
        if split_of_content(content) != split:
            continue
        solution = solve_level()
        if solution is None or len(solution) < min_solution:
            continue
        task_id = f"{name}-{hashlib.sha256(content.encode()).hexdigest()[:16]}"
        params = {"rows": list(rows), "max_turns": min(MAX_TURNS_CAP, len(solution) + slack)}
        tasks.setdefault(task_id, TaskSpec(env=name, task_id=task_id, params=params))
    return list(tasks.values())
