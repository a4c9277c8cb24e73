"""Subject, stream and bucket names, all scoped by run id.

Scoping by run id lets several runs share one NATS deployment, and lets per-role
permissions be written as exact subjects (NATS wildcards match whole tokens only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-64 characters of [A-Za-z0-9_-]")
    return run_id


def _check_shard(shard: int) -> int:
    if type(shard) is not int or shard < 0:
        raise ValueError(f"allocator shard {shard!r} must be an int >= 0")
    return shard


@dataclass(frozen=True)
class Subjects:
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    @property
    def prefix(self) -> str:
        return f"tracerl.{self.run_id}"

    # Streams (JetStream names cannot contain dots).
    @property
    def nodes_stream(self) -> str:
        return f"TRACERL_{self.run_id}_NODES"

    @property
    def work_stream(self) -> str:
        return f"TRACERL_{self.run_id}_WORK"

    @property
    def trees_stream(self) -> str:
        return f"TRACERL_{self.run_id}_TREES"

    @property
    def dead_letter_stream(self) -> str:
        return f"TRACERL_{self.run_id}_DLQ"

    # Subjects.
    @property
    def nodes(self) -> str:
        """Every actor's nodes for allocator shard 0 (the single allocator): a stream subject
        and that shard's consumer filter (publish with ``nodes_from``)."""
        return f"{self.prefix}.nodes.*"

    @property
    def sharded_nodes(self) -> str:
        """Every actor's nodes for the allocator shards k > 0: the stream's other subject."""
        return f"{self.prefix}.nodes.*.*"

    def nodes_for_shard(self, shard: int) -> str:
        """The filter of allocator shard ``shard``'s nodes consumer: ``*`` is exactly one
        token, so no shard's filter matches another shard's subjects."""
        return self.nodes if shard == 0 else f"{self.prefix}.nodes.*.{_check_shard(shard)}"

    def nodes_from(self, actor_id: str, shard: int = 0) -> str:
        """Where ``actor_id`` publishes its TurnNodes for the work of allocator shard ``shard``
        (``WorkItem.shard``): the sender is in the subject, so the server's per-actor
        permissions decide who may claim an actor id, not the payload. Shard 0 keeps the
        single allocator's subject."""
        check_run_id(actor_id)
        base = f"{self.prefix}.nodes.{actor_id}"
        return base if shard == 0 else f"{base}.{_check_shard(shard)}"

    def node_subject_parts(self, subject: str) -> tuple[str, int] | None:
        """The actor id and allocator shard a nodes subject names, or None if ``subject`` is
        not one of this run's nodes subjects."""
        head = f"{self.prefix}.nodes."
        if not subject.startswith(head):
            return None
        actor_id, dot, shard = subject[len(head) :].partition(".")
        if not _RUN_ID.match(actor_id):
            return None
        if not dot:
            return actor_id, 0
        if not shard.isdecimal() or shard != str(int(shard)) or int(shard) == 0:
            return None
        return actor_id, int(shard)

    def sender_of_node(self, subject: str) -> str | None:
        """The actor id a nodes subject names, or None if ``subject`` is not one of this run's."""
        parts = self.node_subject_parts(subject)
        return parts[0] if parts is not None else None

    @property
    def work_shared(self) -> str:
        return f"{self.prefix}.work.shared"

    def work_for_actor(self, actor_id: str) -> str:
        check_run_id(actor_id)
        return f"{self.prefix}.work.actor.{actor_id}"

    @property
    def work_all(self) -> str:
        return f"{self.prefix}.work.>"

    @property
    def trees(self) -> str:
        return f"{self.prefix}.trees"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def weights_announce(self) -> str:
        return f"{self.prefix}.weights"

    # Object store and KV buckets.
    @property
    def weights_bucket(self) -> str:
        return f"tracerl_{self.run_id}_weights"

    @property
    def state_bucket(self) -> str:
        return f"tracerl_{self.run_id}_state"

    # Durable consumer names.
    @property
    def allocator_consumer(self) -> str:
        return "allocator"

    def allocator_shard_consumer(self, shard: int) -> str:
        """Allocator shard ``shard``'s durable on the nodes stream; shard 0 is the single allocator's."""
        return self.allocator_consumer if shard == 0 else f"allocator_shard{_check_shard(shard)}"

    @property
    def learner_consumer(self) -> str:
        return "learner"

    @property
    def shared_work_consumer(self) -> str:
        return "actors"

    def actor_work_consumer(self, actor_id: str) -> str:
        return f"actor_{check_run_id(actor_id)}"

    # KV keys.
    POLICY_VERSION_KEY = "policy_version"
    # The learner's current weights broadcast group (``BroadcastGroup``).
    BROADCAST_GROUP_KEY = "weights_broadcast"

    @staticmethod
    def actor_key(actor_id: str) -> str:
        return f"actors.{check_run_id(actor_id)}"

    @staticmethod
    def broadcast_join_key(actor_id: str) -> str:
        """Where an actor asks to join the weights broadcast (``BroadcastJoin``)."""
        return f"broadcast.{check_run_id(actor_id)}"
