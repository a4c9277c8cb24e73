"""The learner's weights transport: one interface, the object store or a broadcast in front of it.

``publish(blob, announcement)`` gets one announced version to the actors. It may be called
again with the same version after a failure (the learner retries until it lands), so each
implementation makes a repeat harmless. Versions, checksums and the staleness bound are the
same for both: the broadcast carries the very announcement the object store path writes to
the KV, and every actor verifies the blob against it before loading.
"""

from __future__ import annotations

from typing import Any, Protocol

from protocol import WeightsAnnouncement
from tracerl.config import WeightsConfig

from .broadcast import BroadcastSender


class WeightsPublisher(Protocol):
    # True if actors may hold a version before its announcement is in the KV: the learner
    # then records the version first, so that a restart never reuses its number.
    reaches_actors_before_announcement: bool

    async def start(self) -> None: ...

    async def publish(self, blob: bytes, announcement: WeightsAnnouncement) -> None: ...

    async def close(self) -> None: ...


class ObjectStorePublisher:
    """The object in the weights bucket, then the announcement in the KV (and its nudge)."""

    reaches_actors_before_announcement = False

    def __init__(self, bus: Any) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def publish(self, blob: bytes, announcement: WeightsAnnouncement) -> None:
        await self.bus.put_object(announcement.object_name, blob)
        await self.bus.announce_weights(announcement)

    async def close(self) -> None:
        return None


class BroadcastPublisher:
    """The group's members first, by broadcast; then the object store and the KV, as without it,
    for the actors outside the group (late joiners, and members that missed the broadcast)."""

    reaches_actors_before_announcement = True

    def __init__(self, sender: BroadcastSender, fallback: ObjectStorePublisher) -> None:
        self.sender = sender
        self.fallback = fallback
        self.broadcast_version = -1

    async def start(self) -> None:
        await self.sender.start()

    async def publish(self, blob: bytes, announcement: WeightsAnnouncement) -> None:
        if announcement.policy_version > self.broadcast_version:
            # Once per version: a retry after an object-store failure does not send it again.
            self.broadcast_version = announcement.policy_version
            await self.sender.send(blob, announcement)
        await self.fallback.publish(blob, announcement)

    async def close(self) -> None:
        await self.sender.close_group()


def make_publisher(bus: Any, config: WeightsConfig, run_id: str, actor_timeout_s: float) -> WeightsPublisher:
    fallback = ObjectStorePublisher(bus)
    if config.transport == "object_store":
        return fallback
    return BroadcastPublisher(BroadcastSender(bus, config, run_id, actor_timeout_s), fallback)
