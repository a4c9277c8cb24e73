"""Per-role NATS permissions, written as exact subjects per run id.

Pure functions: they return the allow-lists that ``bus.server`` writes into the
nats-server config, so the policy can be read and tested without a server.

Policy (see PLATFORM-NOTES "NATS roles, permissions"):

- ``admin`` may do anything; it alone creates streams, buckets and the shared durable
  consumers, and it runs the dead-letter sweeper.
- ``actor`` publishes TurnNodes and dead letters, pulls from the shared work consumer,
  reads the weights object store and the state KV bucket, and writes only registry keys
  ``actors.<id>`` and broadcast join requests ``broadcast.<id>`` (never ``policy_version``
  or ``weights_broadcast``, never the weights bucket).
- ``allocator`` consumes nodes, publishes work and trees, reads the state KV bucket, and
  may read (never consume) the nodes, trees and work streams to rebuild after a restart.
  An allocator shard k > 0 (``allocator.shard``) creates its own durable on the nodes
  stream, filtered to that shard's node subjects.
- ``learner`` consumes trees, writes the weights object store, the ``policy_version`` and
  ``weights_broadcast`` keys and the weights announcement.

Per-actor work subjects: each actor creates (or re-binds) its own durable pull consumer
``actor_<id>`` on the work stream, filtered to ``work.actor.<id>``. nats-py sends that
request on ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, so the actor role is
allowed that API only with a filter under ``work.actor.*``: it can never create a consumer
that competes for the shared queue or reads another stream. The work stream has
work-queue retention, which already forbids two consumers with overlapping filters, so
two processes cannot both claim one actor id.

Per-actor identity: an actor's TurnNodes go to ``nodes.<actor id>`` (``nodes.<actor id>.<k>``
for the work of allocator shard k > 0). The shared ``actor``
user (a single host's dev default) may publish under any id; a per-actor user
(``tracerl bus add-actor``, the default beyond loopback) is allowed only its own node
subject, its own registry and broadcast join keys, its own durable ``actor_<id>`` filtered to its own work
subject, the shared work durable, and a reply inbox of its own. The allocator drops a node
whose ``actor_id`` differs from the id in its subject, so with per-actor users no actor can
publish a node as another. Dead letters stay one shared sink: an actor copies there what it
could not decode, and nothing reads the DLQ as coming from anyone in particular.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.subjects import Subjects

ROLES: tuple[str, ...] = ("admin", "actor", "allocator", "learner")

# Every key Subjects.actor_key can produce (KV keys are subject tokens, so "*" is one id).
ACTOR_KEY_PATTERN = Subjects.actor_key("any").rpartition(".")[0] + ".*"
# Every key Subjects.broadcast_join_key can produce.
BROADCAST_JOIN_KEY_PATTERN = Subjects.broadcast_join_key("any").rpartition(".")[0] + ".*"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_server_config(self) -> dict[str, dict[str, list[str]]]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


#: Where a role's credential stands for any actor rather than one.
ANY_ACTOR = "*"
#: The reason counted (``rejected.<reason>``) when a message names an actor other than the
#: one its subject or key belongs to.
ACTOR_MISMATCH = "actor_mismatch"


def inbox_prefix(role: str, actor_id: str = "") -> str:
    """Replies for a role (or one actor) land under its own prefix, so no one reads another's replies."""
    return f"_INBOX_{role}_{actor_id}" if actor_id else f"_INBOX_{role}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _pull_consumer(stream: str, consumer: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _read_via_ordered_consumer(stream: str) -> list[str]:
    # KV and object-store reads create short-lived ordered consumers; flow control
    # replies ($JS.FC) are required or reads hang.
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
    ]


def _replay_stream(stream: str) -> list[str]:
    # Only the unnamed create of an ephemeral ordered consumer: no named consumer (such as
    # the learner's durable on the trees stream) can be created, changed or deleted.
    return [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.FC.{stream}.>", f"$JS.API.STREAM.INFO.{stream}"]


def _read_work_queue(stream: str) -> list[str]:
    # A work-queue stream refuses consumers overlapping the actors' durables, so a replay
    # reads its pending items by sequence; MSG.GET never acknowledges or removes them.
    return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}"]


def _read_state(s: Subjects) -> list[str]:
    return _read_via_ordered_consumer(kv_stream(s.state_bucket))


def _read_weights(s: Subjects) -> list[str]:
    # ObjectStore.get looks its stream up by name.
    return [*_read_via_ordered_consumer(object_stream(s.weights_bucket)), "$JS.API.STREAM.NAMES"]


def _actor_publish(s: Subjects, actor_id: str) -> list[str]:
    """An actor's publish allow-list: any actor's subjects for ``ANY_ACTOR``, else only its own."""
    if actor_id == ANY_ACTOR:
        own_nodes, own_key, own_join_key = [s.nodes, s.sharded_nodes], ACTOR_KEY_PATTERN, BROADCAST_JOIN_KEY_PATTERN
        own_consumer, own_work = "*", f"{s.prefix}.work.actor.*"
        pulled = ["*"]
    else:
        # Its nodes for allocator shard 0, and for any other shard (Subjects.nodes_from).
        own_nodes, own_key = [s.nodes_from(actor_id), f"{s.nodes_from(actor_id)}.*"], Subjects.actor_key(actor_id)
        own_join_key = Subjects.broadcast_join_key(actor_id)
        own_consumer, own_work = s.actor_work_consumer(actor_id), s.work_for_actor(actor_id)
        pulled = [own_consumer, s.shared_work_consumer]
    return [
        *own_nodes,
        s.dead_letter,
        f"$KV.{s.state_bucket}.{own_key}",
        f"$KV.{s.state_bucket}.{own_join_key}",
        f"$JS.API.CONSUMER.CREATE.{s.work_stream}.{own_consumer}.{own_work}",
        *(f"$JS.API.CONSUMER.INFO.{s.work_stream}.{name}" for name in pulled),
        *(f"$JS.API.CONSUMER.MSG.NEXT.{s.work_stream}.{name}" for name in pulled),
        *(f"$JS.ACK.{s.work_stream}.{name}.>" for name in pulled),
        *_read_state(s),
        *_read_weights(s),
    ]


def _role_publish(role: str, s: Subjects) -> list[str]:
    if role == "actor":
        return _actor_publish(s, ANY_ACTOR)
    if role == "allocator":
        return [
            s.work_shared,
            f"{s.prefix}.work.actor.*",
            s.trees,
            s.dead_letter,
            *_pull_consumer(s.nodes_stream, s.allocator_consumer),
            # Allocator shards k > 0 each create their own durable filtered to their nodes
            # (allocator.service.shard_consumer_config), and read the single allocator's to copy it.
            f"$JS.API.CONSUMER.CREATE.{s.nodes_stream}.*.{s.sharded_nodes}",
            *_pull_consumer(s.nodes_stream, "*"),
            # Rebuilding after a restart (allocator.service.rebuild_from_streams).
            *_replay_stream(s.nodes_stream),
            *_replay_stream(s.trees_stream),
            *_read_work_queue(s.work_stream),
            *_read_state(s),
        ]
    if role == "learner":
        weights_stream = object_stream(s.weights_bucket)
        return [
            s.weights_announce,
            s.dead_letter,
            f"$O.{s.weights_bucket}.>",
            f"$JS.API.STREAM.PURGE.{weights_stream}",
            f"$KV.{s.state_bucket}.{Subjects.POLICY_VERSION_KEY}",
            f"$KV.{s.state_bucket}.{Subjects.BROADCAST_GROUP_KEY}",
            *_pull_consumer(s.trees_stream, s.learner_consumer),
            *_read_state(s),
            *_read_weights(s),
        ]
    raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def role_permissions(role: str, run_ids: list[str], actor_id: str = "") -> Permissions:
    """The allow-lists of ``role`` over every run served by one nats-server; with
    ``actor_id``, those of that one actor's own credential."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if actor_id and role != "actor":
        raise ValueError(f"only actors have per-identity credentials, not role {role!r}")
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    publish: list[str] = []
    subscribe: list[str] = [f"{inbox_prefix(role, actor_id)}.>"]
    for run_id in run_ids:
        s = Subjects(run_id)
        publish.extend(_actor_publish(s, actor_id) if actor_id else _role_publish(role, s))
        if role in ("actor", "allocator"):
            subscribe.append(s.weights_announce)
    return Permissions(publish=tuple(dict.fromkeys(publish)), subscribe=tuple(dict.fromkeys(subscribe)))
