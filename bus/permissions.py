"""Per-role NATS permissions, written as exact subjects per run id.

Pure functions: they return the allow-lists that ``bus.server`` writes into the
nats-server config, so the policy can be read and tested without a server.

Policy (see PLATFORM-NOTES "NATS roles, permissions"):

- ``admin`` may do anything; it alone creates streams, buckets and the shared durable
  consumers, and it runs the dead-letter sweeper.
- ``actor`` publishes TurnNodes and dead letters, pulls from the shared work consumer,
  reads the weights object store and the state KV bucket, and writes only registry keys
  ``actors.<id>`` (never ``policy_version``, never the weights bucket).
- ``allocator`` consumes nodes, publishes work and trees, reads the state KV bucket, and
  may read (never consume) the nodes, trees and work streams to rebuild after a restart.
- ``learner`` consumes trees, writes the weights object store, the ``policy_version`` key
  and the weights announcement.

Per-actor work subjects: each actor creates (or re-binds) its own durable pull consumer
``actor_<id>`` on the work stream, filtered to ``work.actor.<id>``. nats-py sends that
request on ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, so the actor role is
allowed that API only with a filter under ``work.actor.*``: it can never create a consumer
that competes for the shared queue or reads another stream. The work stream has
work-queue retention, which already forbids two consumers with overlapping filters, so
two processes cannot both claim one actor id. All actors share one credential, so
"its own id" cannot be enforced more finely than that without per-actor users.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.subjects import Subjects

ROLES: tuple[str, ...] = ("admin", "actor", "allocator", "learner")

# Every key Subjects.actor_key can produce (KV keys are subject tokens, so "*" is one id).
ACTOR_KEY_PATTERN = Subjects.actor_key("any").rpartition(".")[0] + ".*"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_server_config(self) -> dict[str, dict[str, list[str]]]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def inbox_prefix(role: str) -> str:
    """Replies for a role land under its own prefix, so roles cannot read each other's replies."""
    return f"_INBOX_{role}"


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


def _role_publish(role: str, s: Subjects) -> list[str]:
    if role == "actor":
        actor_work = f"{s.prefix}.work.actor.*"
        return [
            s.nodes,
            s.dead_letter,
            f"$KV.{s.state_bucket}.{ACTOR_KEY_PATTERN}",
            f"$JS.API.CONSUMER.CREATE.{s.work_stream}.*.{actor_work}",
            f"$JS.API.CONSUMER.INFO.{s.work_stream}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{s.work_stream}.*",
            f"$JS.ACK.{s.work_stream}.*.>",
            *_read_state(s),
            *_read_weights(s),
        ]
    if role == "allocator":
        return [
            s.work_shared,
            f"{s.prefix}.work.actor.*",
            s.trees,
            s.dead_letter,
            *_pull_consumer(s.nodes_stream, s.allocator_consumer),
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
            *_pull_consumer(s.trees_stream, s.learner_consumer),
            *_read_state(s),
            *_read_weights(s),
        ]
    raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")


def role_permissions(role: str, run_ids: list[str]) -> Permissions:
    """The allow-lists of ``role`` over every run served by one nats-server."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    publish: list[str] = []
    subscribe: list[str] = [f"{inbox_prefix(role)}.>"]
    for run_id in run_ids:
        s = Subjects(run_id)
        publish.extend(_role_publish(role, s))
        if role in ("actor", "allocator"):
            subscribe.append(s.weights_announce)
    return Permissions(publish=tuple(dict.fromkeys(publish)), subscribe=tuple(dict.fromkeys(subscribe)))
