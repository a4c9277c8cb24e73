"""An actor's heartbeat as tests need it: only who, when and which version matter."""

from __future__ import annotations

from protocol import Heartbeat


def idle_heartbeat(
    run_id: str, actor_id: str, sent_at: float, *, policy_version: int = 0, started_at: float = 0.0, capacity: int = 1
) -> Heartbeat:
    """A heartbeat of an actor with nothing in flight and nothing generated yet."""
    return Heartbeat(
        run_id=run_id,
        actor_id=actor_id,
        policy_version=policy_version,
        inflight=0,
        capacity=capacity,
        tokens_generated=0,
        turns_generated=0,
        started_at=started_at,
        sent_at=sent_at,
    )
