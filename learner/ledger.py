"""Which CompletedTrees the learner acks, when, and which deliveries it does not train (pure).

A tree's message is acked only once the tree is durable: the optimiser step that used it
is in a checkpoint, or it was turned away for a counted reason. Until then the learner
holds the message (kept alive with ``in_progress``), so a learner killed with trees
buffered, or trained but not yet checkpointed, leaves them to its successor.

A checkpoint records the ids of the trees its weights were trained on (``TrainedTrees``).
A delivery whose tree is among them (an ack lost in the crash that followed the
checkpoint, or a copy published twice) is acked without training it again; a delivery
of a tree the learner still holds (redelivered after a bus outage) replaces the held one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

#: How many in-progress signals fit in one ack_wait: one lost or late signal is not a redelivery.
KEEP_ALIVES_PER_ACK_WAIT = 3


def keep_alive_interval_s(ack_wait_s: float) -> float:
    """How often a held message is marked in progress so that its ack_wait never runs out."""
    if ack_wait_s <= 0:
        raise ValueError(f"ack_wait must be > 0, got {ack_wait_s}")
    return ack_wait_s / KEEP_ALIVES_PER_ACK_WAIT


@dataclass
class TrainedTrees:
    """Ids of the trees the weights were trained on, oldest first; the newest ``keep`` are kept.

    Only a tree whose ack may still be outstanding can come back, and acks follow each
    checkpoint, so a window far wider than a few checkpoints' trees is enough.
    """

    keep: int
    _ids: dict[str, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")

    def add(self, tree_ids: Iterable[str]) -> None:
        for tree_id in tree_ids:
            self._ids.pop(tree_id, None)
            self._ids[tree_id] = None
        for oldest in list(self._ids)[: max(0, len(self._ids) - self.keep)]:
            del self._ids[oldest]

    def __contains__(self, tree_id: object) -> bool:
        return tree_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)


class Arrival(StrEnum):
    """What the learner does with a delivered tree."""

    NEW = "new"  # buffer it for a step and hold its message
    HELD = "held"  # a redelivery of a tree it still holds: keep the newer delivery, buffer nothing
    TRAINED = "trained"  # its checkpoint already holds it: ack without training it again


@dataclass
class AckLedger:
    """The trees whose messages the learner holds, by stage, and what to ack after each event.

    ``trained`` is the trainer's record (it adds a step's trees when it takes the step);
    the ledger only reads it.
    """

    trained: TrainedTrees
    buffered: set[str] = field(default_factory=set)
    uncheckpointed: list[str] = field(default_factory=list)

    def arrive(self, tree_id: str) -> Arrival:
        if tree_id in self.buffered or tree_id in self.uncheckpointed:
            return Arrival.HELD
        if tree_id in self.trained:
            return Arrival.TRAINED
        self.buffered.add(tree_id)
        return Arrival.NEW

    def step_taken(self, tree_ids: Iterable[str]) -> None:
        """A step trained on these trees; they are acked after the next checkpoint."""
        for tree_id in tree_ids:
            self.buffered.discard(tree_id)
            self.uncheckpointed.append(tree_id)

    def step_skipped(self, tree_ids: Iterable[str]) -> list[str]:
        """A step that changed no weight: its trees are acked now (they taught nothing)."""
        ids = list(tree_ids)
        self.buffered.difference_update(ids)
        return ids

    def checkpointed(self) -> list[str]:
        """A checkpoint now holds every step taken: the trees to ack."""
        done, self.uncheckpointed = self.uncheckpointed, []
        return done

    def held(self) -> set[str]:
        """Every tree whose message must be kept alive."""
        return self.buffered | set(self.uncheckpointed)

    def unstarted(self) -> list[str]:
        """At a stop: trees no step used, to hand back for the next learner."""
        ids, self.buffered = sorted(self.buffered), set()
        return ids
