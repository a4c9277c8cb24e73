"""Per-step sampling budget, counted in generated turns, with reservations and refunds.

Equal sampling cost is the rule every comparison rests on, so the ledger never lets the
budget be exceeded: issuing work reserves its worst case (num_samples x max turns of the
item) and a finished work item gives back what it did not use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BudgetLedger:
    total_turns: int
    # Reservations of unsettled work plus actual turns of settled work.
    committed: int = 0
    used_turns: int = 0
    used_tokens: int = 0
    issued_samples: int = 0
    refunded_turns: int = 0
    # Turns beyond a work item's reservation (an actor ignoring max_turns): counted, never hidden.
    overspent_turns: int = 0

    def __post_init__(self) -> None:
        if self.total_turns < 1:
            raise ValueError("total_turns must be >= 1")

    @property
    def available(self) -> int:
        return self.total_turns - self.committed

    def can_reserve(self, turns: int) -> bool:
        return 0 < turns <= self.available

    def reserve(self, turns: int, samples: int) -> None:
        if not self.can_reserve(turns):
            raise ValueError(f"reservation of {turns} turns exceeds the {self.available} available")
        self.committed += turns
        self.issued_samples += samples

    def restore(self, turns: int, samples: int) -> None:
        """Re-commit a reservation found while replaying a step after a restart.

        Unchecked: the replay sees each finished item at its full reservation before
        ``settle`` brings it down to its use, so a step that was within its budget may pass
        it in the middle of the replay. Refusing there would leave the rebuilt step with
        less committed than it used, and free budget it does not have.
        """
        self.committed += turns
        self.issued_samples += samples

    def record_turn(self, tokens: int) -> None:
        self.used_turns += 1
        self.used_tokens += tokens

    def settle(self, reserved: int, used: int) -> None:
        """Release the unused part of a finished item's reservation."""
        unused = reserved - used
        if unused >= 0:
            self.committed -= unused
            self.refunded_turns += unused
        else:
            self.committed += -unused
            self.overspent_turns += -unused
