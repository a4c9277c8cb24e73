"""Train/held-out separation shared by every task generator."""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def split_parity(split: str) -> int:
    """0 for train, 1 for held-out: generators give every instance seed this parity, so the
    two splits can never produce the same instance whatever seeds the caller picks."""
    check_split(split)
    return SPLITS.index(split)


def split_of_content(content: str) -> str:
    """The split an instance belongs to, decided by a stable hash of its full description.

    Generators keep only instances whose content hashes into the requested split, so train
    and held-out sets are disjoint by construction (identical content, identical split).
    """
    digest = hashlib.sha256(content.encode()).digest()
    return SPLITS[digest[0] & 1]
