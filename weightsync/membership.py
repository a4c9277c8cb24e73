"""Who is in the weights broadcast group, version by version (pure).

A ``torch.distributed`` group has a fixed size, so the actors do not join a running group:
the learner forms a new group, an *epoch*, at a version boundary whenever the membership it
wants differs from the group it has.

- **Wanted**: every actor that asked to join (``BroadcastJoin``) and whose heartbeat is at
  most ``actor_timeout_s`` old, unless it was left out of an epoch after it asked.
- **At each version**: the same members and a working group: broadcast in it. Anything else:
  close the group (a CLOSE header to its members), and if anyone is wanted, form the next
  epoch with them: publish it in the KV, wait ``join_timeout_s`` for each member to check in
  at the rendezvous store, then connect. Members that did not check in are left out and the
  epoch is formed again (a new number) with those that did.
- **A failed broadcast** (a member died, a timeout) dissolves the group; the next version
  forms a new epoch. A member that sees its group fail asks to join again.
- **Everyone outside the group** (not yet joined, left out, failed) reads the version from
  the object store, which the learner fills for every version, as without a broadcast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from protocol import BroadcastJoin, Heartbeat


def wanted_members(
    joins: Mapping[str, BroadcastJoin],
    heartbeats: Mapping[str, Heartbeat],
    left_out_at: Mapping[str, float],
    now: float,
    actor_timeout_s: float,
) -> tuple[str, ...]:
    """The actors the next group should hold, sorted by id (so ranks do not depend on read order)."""
    wanted = []
    for actor_id, join in joins.items():
        beat = heartbeats.get(actor_id)
        if beat is None or now - beat.sent_at > actor_timeout_s:
            continue
        if join.sent_at <= left_out_at.get(actor_id, float("-inf")):
            continue  # left out of an epoch since it asked: it asks again when it is ready
        wanted.append(actor_id)
    return tuple(sorted(wanted))


@dataclass(frozen=True)
class EpochPlan:
    # keep: broadcast in the current group; form: close it and form one of ``members``;
    # none: close it (if any) and broadcast to no one.
    action: Literal["keep", "form", "none"]
    members: tuple[str, ...] = ()


def plan_epoch(current: tuple[str, ...] | None, wanted: tuple[str, ...]) -> EpochPlan:
    """What to do at a version boundary with the group ``current`` (None: no working group)."""
    if current is not None and current == wanted:
        return EpochPlan("keep", current)
    if not wanted:
        return EpochPlan("none")
    return EpochPlan("form", wanted)


def split_check_ins(members: Iterable[str], arrived: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(checked in, missing), each in the members' order."""
    present = set(arrived)
    ordered = tuple(members)
    return tuple(m for m in ordered if m in present), tuple(m for m in ordered if m not in present)
