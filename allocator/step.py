"""One allocator step's state, and the ids that name its trees and work items.

Ids carry what a restarted allocator needs to place a replayed message: a tree id holds its
step index, a work id its sequence number (see allocator/replay.py).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol import WorkItem

from .budget import BudgetLedger

if TYPE_CHECKING:
    from .strategies.base import PlanJob

Issued = tuple[WorkItem, str | None]  # the item and the actor holding its prefix, if any
Issue = Callable[[float], Issued | None]  # builds, reserves and registers one item at time `now`


@dataclass
class StepState:
    index: int
    opened_at: float
    budget: BudgetLedger
    tree_ids: list[str] = field(default_factory=list)
    tasks: set[str] = field(default_factory=set)
    roots_issued: bool = False
    rounds: int = 0
    # Candidate draws made for this step (the key of the next one, see ``selection.paired_draw``).
    draws: int = 0
    # A step-wise search strategy's chains, by tree id (allocator/strategies/search.py).
    search: dict[str, Any] = field(default_factory=dict)
    # Issued work items (and their samples) whose chains have not all come back.
    outstanding_items: int = 0
    outstanding_samples: int = 0
    # Planned work not yet handed out; a call issues at most max_items_per_call of it.
    queue: deque[Issue] = field(default_factory=deque)
    # The round being planned, when planning it takes more than one call.
    job: PlanJob | None = None


_STEP_OF_TREE = re.compile(r"s(\d+)-\d+$")
_WORK_SEQ = re.compile(r"\.w(\d+)$")


def tree_id_for(step: int, seq: int, prefix: str = "") -> str:
    """``<prefix>s<step>-<seq>``: the step is recoverable from the id alone (for replay)."""
    return f"{prefix}s{step}-{seq}"


def step_of_tree(tree_id: str) -> int | None:
    match = _STEP_OF_TREE.search(tree_id)
    return int(match.group(1)) if match else None


def work_id_for(tree_id: str, seq: int) -> str:
    return f"{tree_id}.w{seq}"


def work_seq_of(work_id: str) -> int | None:
    match = _WORK_SEQ.search(work_id)
    return int(match.group(1)) if match else None
