"""FrozenLake as text: walk P to G over a small frozen grid without stepping into a hole H.

Deterministic (not slippery). Walking into the edge leaves P in place and still costs a turn.
Task params::

    {"rows": ["SFFH", "FHFF", "FFFF", "HFFG"], "max_turns": 8}

with S start, G goal, H hole, F frozen. Observations render the board with P for the player
and "." for frozen ice, one row per line, cells separated by spaces.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from protocol import TaskSpec

from .base import EnvironmentError_
from .grid import DELTAS, MAX_TURNS_CAP, GridEnvironment, State, Status, bfs_solve, generate_levels
from .splits import check_split

NAME = "frozenlake"
INSTRUCTION = "frozenlake : move P to G , do not step on H ."
_LEVEL_CHARS = frozenset("SFHG")


@dataclass(frozen=True)
class Lake:
    rows: tuple[str, ...]
    height: int = field(init=False, compare=False)
    width: int = field(init=False, compare=False)
    start: int = field(init=False, compare=False)
    goal: int = field(init=False, compare=False)
    holes: frozenset[int] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        cells = "".join(self.rows)
        object.__setattr__(self, "height", len(self.rows))
        object.__setattr__(self, "width", len(self.rows[0]))
        object.__setattr__(self, "start", cells.index("S"))
        object.__setattr__(self, "goal", cells.index("G"))
        object.__setattr__(self, "holes", frozenset(i for i, c in enumerate(cells) if c == "H"))


def parse_lake(rows: Any) -> Lake:
    if not isinstance(rows, list) or not rows or not all(isinstance(r, str) for r in rows):
        raise EnvironmentError_(f"frozenlake rows must be a non-empty list of strings, got {rows!r}")
    width = len(rows[0])
    if not 2 <= len(rows) <= 8 or not 2 <= width <= 8 or any(len(r) != width for r in rows):
        raise EnvironmentError_(f"frozenlake rows must form a rectangle of 2-8 x 2-8 cells, got {rows!r}")
    cells = "".join(rows)
    if set(cells) - _LEVEL_CHARS or cells.count("S") != 1 or cells.count("G") != 1:
        raise EnvironmentError_(f"frozenlake rows need one S, one G and only S/F/H/G cells, got {rows!r}")
    return Lake(tuple(rows))


def transition(lake: Lake, state: State, move: str) -> State:
    (position,) = state
    dr, dc = DELTAS[move]
    row, col = divmod(position, lake.width)
    row, col = row + dr, col + dc
    if not (0 <= row < lake.height and 0 <= col < lake.width):
        return state
    return (row * lake.width + col,)


def status(lake: Lake, state: State) -> Status:
    (position,) = state
    if position == lake.goal:
        return "won"
    return "lost" if position in lake.holes else "alive"


def render(lake: Lake, state: State) -> str:
    (position,) = state
    cells = ["." if c in "SF" else c for c in "".join(lake.rows)]
    cells[position] = "P"
    return "\n".join(" ".join(cells[r * lake.width : (r + 1) * lake.width]) for r in range(lake.height))


@lru_cache(maxsize=65536)
def solve(lake: Lake, state: State, depth_limit: int) -> tuple[str, ...] | None:
    return bfs_solve(state, lambda s, m: transition(lake, s, m), lambda s: status(lake, s), depth_limit)


def neighbour_holes(lake: Lake, state: State) -> dict[str, bool]:
    """For each move, whether it would step into a hole (the local configuration demos use)."""
    return {move: transition(lake, state, move)[0] in lake.holes for move in DELTAS}


class FrozenLakeEnvironment(GridEnvironment):
    name = NAME

    def _parse_level(self, params: dict[str, Any]) -> tuple[Lake, State, int]:
        lake = parse_lake(params.get("rows"))
        max_turns = params.get("max_turns")
        if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
            raise EnvironmentError_(f"frozenlake max_turns must be an int in [1, {MAX_TURNS_CAP}], got {max_turns!r}")
        return lake, (lake.start,), max_turns

    def _transition(self, state: State, move: str) -> State:
        return transition(self._level, state, move)

    def _status(self, state: State) -> Status:
        return status(self._level, state)

    def _render(self, state: State) -> str:
        return render(self._level, state)

    def _valid_state(self, state: State) -> bool:
        return len(state) == 1 and 0 <= state[0] < self._level.height * self._level.width

    def _solve(self, state: State, depth_limit: int) -> tuple[str, ...] | None:
        return solve(self._level, state, depth_limit)

    def _instruction(self) -> str:
        return INSTRUCTION

    def _move_reason(self, state: State, move: str) -> str:
        return "go"


def random_lake(rng: random.Random, size: int, hole_rate: float) -> Lake:
    cells = ["H" if rng.random() < hole_rate else "F" for _ in range(size * size)]
    start, goal = rng.sample(range(size * size), 2)
    cells[start], cells[goal] = "S", "G"
    return Lake(tuple("".join(cells[r * size : (r + 1) * size]) for r in range(size)))


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    min_size: int = 4,
    max_size: int = 5,
    hole_rate: float = 0.2,
    min_path: int = 3,
    slack: int = 2,
) -> list[TaskSpec]:
    """Solvable lakes whose shortest path has ``min_path``..``MAX_TURNS_CAP`` moves; the turn
    cap is the shortest path plus ``slack`` (at most ``MAX_TURNS_CAP``)."""
    check_split(split)
    if not 2 <= min_size <= max_size <= 8:
        raise ValueError(f"need 2 <= min_size <= max_size <= 8, got {min_size}, {max_size}")
    if not 1 <= min_path <= MAX_TURNS_CAP:
        raise ValueError(f"min_path must be in [1, {MAX_TURNS_CAP}], got {min_path}")

    def draw(rng: random.Random) -> tuple[list[str], Callable[[], tuple[str, ...] | None]]:
        lake = random_lake(rng, rng.randint(min_size, max_size), hole_rate)
        return list(lake.rows), lambda: solve(lake, (lake.start,), MAX_TURNS_CAP)

    return generate_levels(NAME, split, count, seed, min_solution=min_path, slack=slack, draw=draw)
