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
import random
import string
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Literal

from protocol import TaskSpec

from . import tags
from .base import EnvironmentError_
from .snapshots import require
from .splits import Proposal, distinct_tasks
from .turns import TurnEnvironment

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


class GridEnvironment(TurnEnvironment, abc.ABC):
    stop_strings = tags.ACTION_STOP_STRINGS
    special_tokens = tags.SEARCH_R1_TAGS
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._level: Any = None
        self._state: State = ()
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
        self._start(task)
        return f"{self._instruction()}\n{self._render(self._state)}"

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

    def move_reason(self, move: str) -> str:
        """The one-word thought that goes with playing ``move`` from the current state."""
        return self._move_reason(self._state, move)

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        self._level, self._state, self.max_turns = self._parse_level(task.params)
        solution = self._solve(self._state, EXPERT_SEARCH_DEPTH)
        if not solution:
            raise EnvironmentError_(f"{self.name} task {task.task_id!r} has no solution")
        self._initial_solution_length = len(solution)

    def _act(self, action_text: str) -> str:
        move = parse_move(action_text)
        if move is None:
            return tags.information(f"invalid action\n{self._render(self._state)}")
        self._state = self._transition(self._state, move)
        outcome = self._status(self._state)
        if outcome != "alive":
            self._done = True
            self._reward = 1.0 if outcome == "won" else 0.0
        return tags.information(self._render(self._state))

    def _own_state(self) -> dict[str, Any]:
        return {"state": list(self._state)}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        cells: Any = snapshot.get("state")
        require(isinstance(cells, list) and all(type(v) is int for v in cells), "snapshot state must be a list of ints")
        require(self._valid_state(tuple(cells)), f"snapshot state {cells!r} is impossible on this level")
        outcome = self._status(tuple(cells))
        require(outcome == "alive" or done, "snapshot is in a terminal position but not done")
        require(reward == (1 if outcome == "won" else 0), "snapshot reward disagrees with the position")
        self._state = tuple(cells)


def generate_levels(
    name: str,
    split: str,
    count: int,
    seed: int,
    *,
    min_solution: int,
    slack: int,
    draw: Callable[[random.Random], tuple[list[str], Callable[[], tuple[str, ...] | None]]],
) -> list[TaskSpec]:
    """Distinct solvable levels of ``split``: ``draw(rng)`` gives a level's rows and a solver.

    The split is decided by the level's content before solving, since solving costs more.
    The turn cap is the optimal solution length plus ``slack`` (at most ``MAX_TURNS_CAP``).
    """

    def propose(rng: random.Random) -> Proposal:
        rows, solve_level = draw(rng)

        def params() -> dict[str, Any] | None:
            solution = solve_level()
            if solution is None or len(solution) < min_solution:
                return None
            return {"rows": list(rows), "max_turns": min(MAX_TURNS_CAP, len(solution) + slack)}

        return "/".join(rows), params

    return distinct_tasks(name, split, count, seed, propose, attempts_per_task=200)
