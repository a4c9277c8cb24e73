"""Which published weight versions the object store may drop, so a run of days stays bounded.

Every policy version is published under its own object name (``policy-v<version>``), so an
actor fetching version v is never cut off by v+1. A version stays while it can still be used:

- it is within the staleness bound, ``version >= current - eta``: tokens it samples may
  still be trained on;
- or a live actor (heartbeat within ``actor_timeout_s``) reports it as its loaded version.

Everything else is deleted after each publication. Objects whose names carry no version
(written by another tool) are never touched. The decisions here are pure; ``prune_weights``
is the thin I/O shell the learner runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from protocol import Heartbeat, WeightsAnnouncement

WEIGHTS_OBJECT_PREFIX = "policy-v"
_VERSIONED = re.compile(rf"^{re.escape(WEIGHTS_OBJECT_PREFIX)}(\d+)$")


def weights_object_name(version: int) -> str:
    return f"{WEIGHTS_OBJECT_PREFIX}{version}"


def weights_announcement(run_id: str, version: int, blob: bytes, now: float) -> WeightsAnnouncement:
    """What the learner announces for ``blob`` as ``version``: its object, size and sha256."""
    return WeightsAnnouncement(
        run_id=run_id,
        policy_version=version,
        object_name=weights_object_name(version),
        sha256=hashlib.sha256(blob).hexdigest(),
        num_bytes=len(blob),
        format="safetensors",
        created_at=now,
    )


def weights_object_version(name: str) -> int | None:
    """The version in a ``weights_object_name``; None for any other name."""
    match = _VERSIONED.match(name)
    return int(match.group(1)) if match else None


def live_actor_versions(heartbeats: Iterable[Heartbeat], now: float, actor_timeout_s: float) -> set[int]:
    """The policy versions reported by actors whose last heartbeat is at most ``actor_timeout_s`` old.

    A killed actor's registry entry stays behind; without the age test it would pin its
    version in the store for ever.
    """
    return {beat.policy_version for beat in heartbeats if now - beat.sent_at <= actor_timeout_s}


def weights_versions_to_delete(
    stored: Iterable[int], current_version: int, staleness_eta: int, live_versions: Iterable[int]
) -> list[int]:
    """The stored versions older than ``current_version - staleness_eta`` that no live actor holds, oldest first."""
    if staleness_eta < 0:
        raise ValueError(f"staleness_eta must be >= 0, got {staleness_eta}")
    oldest_usable = current_version - staleness_eta
    held = set(live_versions)
    return sorted(v for v in set(stored) if v < oldest_usable and v not in held)


class WeightsStore(Protocol):
    """The part of ``bus.client.BusClient`` that pruning uses."""

    async def list_objects(self) -> list[str]: ...

    async def delete_object(self, name: str) -> None: ...

    async def get_actors(self) -> dict[str, Heartbeat]: ...


@dataclass(frozen=True)
class Pruned:
    deleted: tuple[int, ...]
    kept: tuple[int, ...]
    live_versions: tuple[int, ...]


async def prune_weights(
    store: WeightsStore, current_version: int, staleness_eta: int, actor_timeout_s: float, now: float
) -> Pruned:
    """Delete the weight objects ``weights_versions_to_delete`` names; what was deleted and kept."""
    stored = {v: name for name in await store.list_objects() if (v := weights_object_version(name)) is not None}
    live = live_actor_versions((await store.get_actors()).values(), now, actor_timeout_s)
    doomed = weights_versions_to_delete(stored, current_version, staleness_eta, live)
    for version in doomed:
        await store.delete_object(stored[version])
    return Pruned(
        deleted=tuple(doomed),
        kept=tuple(sorted(set(stored) - set(doomed))),
        live_versions=tuple(sorted(live)),
    )
