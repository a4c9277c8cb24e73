"""Hostile traffic for `tracerl bench flood`, and its reconciliation: pure functions of a seed.

Two kinds of hostile input, each with a prediction of exactly what the run must count:

- **Malformed messages** on every subject of a run, sent with the admin credentials (which
  may publish anywhere, so the bus lets them through and the roles must refuse them): random
  bytes, truncated valid messages, oversized ones, and msgpack that violates the schema
  (wrong field types, missing and extra fields, a broken envelope, a wrong schema version, a
  valid message of another type or of another run, a value its type refuses). ``plan_flood``
  draws them from a seed; ``expected_rejects`` says, per consuming role and reason, what
  that role's ``bus.rejected.<reason>`` counters must grow by.
- **Wrong-role operations** (``wrong_role_attempts``): an actor announcing weights or
  writing the weights KV, the allocator taking the trees that belong to the learner, the
  learner publishing nodes, ... Each must be refused by the server's permissions, which
  the client sees as one "permissions violation" error per attempt.

``reconcile_rejects`` and ``reconcile_violations`` compare the prediction with what was
counted. Everything here is deterministic and does no I/O, so it is tested against exact
answers (tests/tracerl/test_flood.py); bench.flood does the sending and the reading.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from bus.permissions import object_stream
from protocol import (
    MESSAGE_TYPES,
    BroadcastGroup,
    BroadcastJoin,
    CompletedTree,
    Heartbeat,
    ProtocolError,
    Subjects,
    TaskSpec,
    TreeNodeRecord,
    TurnNode,
    WeightsAnnouncement,
    WorkItem,
    decode,
    encode,
    plain_body,
    replace,
)

# Every id the flood makes up starts with this, so a flood message that got into a tree
# would be found by its id.
FLOOD_ID_PREFIX = "flood-"
OTHER_RUN_ID = "flood-other-run"
#: The actor id the flood's well-formed TurnNodes claim, and the nodes subject they are sent on.
FLOOD_ACTOR = f"{FLOOD_ID_PREFIX}actor"

KINDS: tuple[str, ...] = (
    "random_bytes",
    "truncated",
    "oversized",
    "wrong_type",
    "missing_field",
    "extra_field",
    "bad_envelope",
    "wrong_version",
    "wrong_schema",
    "wrong_run",
    "invalid_value",
)

# A field change each type's own checks refuse (``__post_init__``); types without such
# checks have no "invalid_value" kind.
_INVALID_VALUES: dict[type, dict[str, Any]] = {
    TurnNode: {"depth": 0},
    WorkItem: {"num_samples": 0},
    CompletedTree: {"step_tree_count": 0},
}

# The field an oversized message is padded in, per type.
_PADDING_FIELD: dict[type, str] = {
    TurnNode: "observation_text",
    WorkItem: "env_snapshot",
    CompletedTree: "strategy",
    WeightsAnnouncement: "object_name",
    Heartbeat: "actor_id",
    BroadcastJoin: "actor_id",
    BroadcastGroup: "host",
}


def kinds_for(cls: type[Any]) -> tuple[str, ...]:
    return tuple(k for k in KINDS if k != "invalid_value" or cls in _INVALID_VALUES)


# ---------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class FloodTarget:
    """One subject of a run, the message type its consumers expect, and who consumes it.

    ``consumer`` is the role that decodes every message on the subject ("allocator",
    "learner", "actors" for the shared work queue, "actor:<id>" for one actor's own work
    subject) or "" for a subject whose payloads no role decodes.
    """

    subject: str
    message_type: type
    consumer: str
    note: str = ""
    # A core-NATS subject (no stream behind it): published without waiting for an ack.
    core: bool = False


def run_targets(subjects: Subjects, actor_ids: Sequence[str]) -> list[FloodTarget]:
    """Every subject a run uses, in a fixed order."""
    s = subjects
    return [
        # Under the id the flood's well-formed nodes claim, so the allocator judges their content.
        FloodTarget(s.nodes_from(FLOOD_ACTOR), TurnNode, "allocator"),
        FloodTarget(s.work_shared, WorkItem, "actors"),
        *(FloodTarget(s.work_for_actor(a), WorkItem, f"actor:{a}") for a in actor_ids),
        FloodTarget(s.trees, CompletedTree, "learner"),
        # Actors and the allocator subscribe, but only as a nudge to re-read the weights KV.
        FloodTarget(
            s.weights_announce,
            WeightsAnnouncement,
            "",
            "a nudge to re-read the weights KV: payloads are never decoded",
            core=True,
        ),
        FloodTarget(s.dead_letter, TurnNode, "", "stored for inspection: nothing consumes it"),
    ]


def consumer_group(consumer: str) -> str:
    """The role whose counters show a consumer's rejects: every actor shares "actors"."""
    return "actors" if consumer.startswith("actor") else consumer


# ---------------------------------------------------------------------------- messages


def template(cls: type[Any], run_id: str, rng: random.Random) -> Any:
    """A valid message of ``cls`` for ``run_id`` whose ids are all flood ids."""
    n = rng.randrange(10**9)
    tree_id, node_id = f"{FLOOD_ID_PREFIX}t{n}", f"{FLOOD_ID_PREFIX}n{n}"
    task = TaskSpec(env="multihop", task_id=f"{FLOOD_ID_PREFIX}task{n}", params={"question": "who?"})
    tokens = [rng.randrange(1, 500) for _ in range(rng.randint(4, 40))]
    logprobs = [-rng.randrange(1, 64) / 16 for _ in tokens]  # exact in float32, as TurnNode carries them
    if cls is TurnNode:
        return TurnNode(
            run_id=run_id,
            tree_id=tree_id,
            node_id=node_id,
            parent_id=None,
            work_id=f"{tree_id}-w",
            actor_id=FLOOD_ACTOR,
            task=task,
            depth=1,
            policy_version=0,
            prompt_token_ids=tokens[:4],
            action_token_ids=tokens,
            behaviour_logprobs=logprobs,
            observation_token_ids=tokens[:3],
            action_text="<search>x</search>",
            observation_text="nothing",
            env_snapshot=b"\x80",
            env_score=0.0,
            done=True,
            reward=1.0,
            created_at=0.0,
        )
    if cls is WorkItem:
        return WorkItem.single_episode(
            run_id=run_id,
            tree_id=tree_id,
            task=task,
            temperature=1.0,
            seed=0,
            max_tokens_per_turn=64,
            max_turns=1,
            min_policy_version=0,
            issued_at=0.0,
        )
    if cls is CompletedTree:
        record = TreeNodeRecord(
            node_id=node_id,
            parent_id=None,
            depth=1,
            policy_version=0,
            action_token_ids=tokens,
            behaviour_logprobs=logprobs,
            observation_token_ids=[],
            done=True,
            reward=1.0,
        )
        return CompletedTree(
            shard=0,
            shard_count=1,
            run_id=run_id,
            tree_id=tree_id,
            task=task,
            strategy="trace",
            allocator_step=0,
            prompt_token_ids=tokens[:4],
            nodes=[record],
            status="complete",
            budget_turns=1,
            step_tree_count=1,
            created_at=0.0,
        )
    if cls is WeightsAnnouncement:
        return WeightsAnnouncement(
            run_id=run_id,
            policy_version=10**6,
            object_name=f"{FLOOD_ID_PREFIX}weights",
            sha256="0" * 64,
            num_bytes=1,
            format="safetensors",
            created_at=0.0,
        )
    if cls is Heartbeat:
        return Heartbeat(
            run_id=run_id,
            actor_id=FLOOD_ACTOR,
            policy_version=0,
            inflight=0,
            capacity=1,
            tokens_generated=0,
            turns_generated=0,
            started_at=0.0,
            sent_at=0.0,
        )
    if cls is BroadcastJoin:
        return BroadcastJoin(run_id=run_id, actor_id=FLOOD_ACTOR, sent_at=0.0)
    if cls is BroadcastGroup:
        return BroadcastGroup(
            run_id=run_id,
            group_id=f"{FLOOD_ID_PREFIX}group{n}",
            epoch=1,
            host="127.0.0.1",
            port=1,
            backend="gloo",
            members=[FLOOD_ACTOR],
            bucket_bytes=1,
            created_at=0.0,
        )
    raise TypeError(f"no template for {cls.__name__}")


def _envelope(cls: type[Any], body: Any, version: int | None = None, schema: str | None = None) -> bytes:
    envelope = {
        "schema": schema or cls.SCHEMA,
        "version": cls.SCHEMA_VERSION if version is None else version,
        "body": body,
    }
    return msgpack.packb(envelope, use_bin_type=True)


def _wrong_value(value: Any) -> Any:
    # A map where anything but a map is expected, a list where a map is: no field of any
    # message accepts the replacement.
    return [1] if isinstance(value, dict) else {"flood": 1}


def padded(message: Any, min_bytes: int, rng: random.Random) -> bytes:
    """``message`` encoded at more than ``min_bytes`` bytes, padded in one of its fields."""
    name = _PADDING_FIELD[type(message)]
    current = getattr(message, name)
    # The filler replaces the field's value, and its msgpack header is never shorter than
    # the old one's: the payload ends up at least min_bytes + 1 bytes long.
    size = min_bytes - len(encode(message)) + len(current) + 1 + rng.randrange(4096)
    filler: Any = b"x" * size if isinstance(current, bytes) else "x" * size
    return encode(replace(message, **{name: filler}))


def hostile_payload(kind: str, cls: type[Any], run_id: str, rng: random.Random, max_bytes: int) -> bytes:
    """One message of ``kind`` aimed at a subject whose consumers expect ``cls``."""
    if kind == "random_bytes":
        return rng.randbytes(rng.randrange(0, 2048))
    valid = template(cls, run_id, rng)
    body = plain_body(valid)
    if kind == "truncated":
        payload = encode(valid)
        return payload[: rng.randrange(len(payload))]
    if kind == "oversized":
        return padded(valid, max_bytes, rng)
    if kind == "wrong_type":
        name = rng.choice(sorted(body))
        return _envelope(cls, {**body, name: _wrong_value(body[name])})
    if kind == "missing_field":
        name = rng.choice(sorted(body))
        return _envelope(cls, {k: v for k, v in body.items() if k != name})
    if kind == "extra_field":
        return _envelope(cls, {**body, f"{FLOOD_ID_PREFIX}field": rng.randrange(100)})
    if kind == "bad_envelope":
        envelope = {"schema": cls.SCHEMA, "version": cls.SCHEMA_VERSION, "body": body}
        del envelope[rng.choice(sorted(envelope))]
        return msgpack.packb(envelope, use_bin_type=True)
    if kind == "wrong_version":
        return _envelope(cls, body, version=rng.choice([cls.SCHEMA_VERSION + 1, cls.SCHEMA_VERSION - 1, 99]))
    if kind == "wrong_schema":
        other = rng.choice(sorted((c for c in MESSAGE_TYPES.values() if c is not cls), key=lambda c: c.SCHEMA))
        return encode(template(other, run_id, rng))
    if kind == "wrong_run":
        return encode(replace(valid, run_id=OTHER_RUN_ID))
    if kind == "invalid_value":
        return _envelope(cls, {**body, **_INVALID_VALUES[cls]})
    raise ValueError(f"unknown flood kind {kind!r}")


def split_evenly(total: int, names: Sequence[str]) -> dict[str, int]:
    """``total`` over ``names``, the remainder one each to the first ones."""
    base, extra = divmod(total, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def kind_counts(total: int, kinds: Sequence[str], oversized_cap: int) -> dict[str, int]:
    """How many of each kind one subject gets: at most ``oversized_cap`` oversized messages
    (each is larger than the consumers' limit), the rest split evenly over the other kinds."""
    oversized = min(oversized_cap, total) if "oversized" in kinds else 0
    others = [k for k in kinds if k != "oversized"]
    counts = split_evenly(total - oversized, others)
    if "oversized" in kinds:
        counts["oversized"] = oversized
    return {k: counts[k] for k in kinds}


@dataclass(frozen=True)
class FloodMessage:
    subject: str
    kind: str
    payload: bytes


def plan_flood(
    seed: int, run_id: str, targets: Sequence[FloodTarget], total: int, max_bytes: int, oversized_per_subject: int
) -> list[FloodMessage]:
    """``total`` hostile messages over ``targets``, shuffled so every consumer is hit at once."""
    if total < len(targets):
        raise ValueError(f"a flood of {total} messages cannot reach {len(targets)} subjects")
    rng = random.Random(seed)
    per_subject = split_evenly(total, [t.subject for t in targets])
    plan = [
        FloodMessage(t.subject, kind, hostile_payload(kind, t.message_type, run_id, rng, max_bytes))
        for t in targets
        for kind, count in kind_counts(per_subject[t.subject], kinds_for(t.message_type), oversized_per_subject).items()
        for _ in range(count)
    ]
    rng.shuffle(plan)
    return plan


def rejection_reason(payload: bytes, cls: type[Any], run_id: str, max_bytes: int) -> str | None:
    """What a consumer of ``cls`` in ``run_id`` says about ``payload`` (None: it accepts it)."""
    try:
        decode(payload, cls, max_bytes=max_bytes, run_id=run_id)
    except ProtocolError as err:
        return err.reason
    return None


# ---------------------------------------------------------------------------- reconciliation


def sent_by_subject_and_kind(plan: Iterable[FloodMessage]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for message in plan:
        out.setdefault(message.subject, Counter())[message.kind] += 1
    return {subject: dict(sorted(kinds.items())) for subject, kinds in out.items()}


def expected_rejects(
    plan: Iterable[FloodMessage], targets: Sequence[FloodTarget], run_id: str, max_bytes: int
) -> dict[str, dict[str, int]]:
    """Per consuming role ("allocator", "learner", "actors"), the rejects by reason the plan must cause.

    Raises if a planned message would be accepted: the flood must consist of messages a
    correct consumer refuses, or "counted == sent" would prove nothing.
    """
    by_subject = {t.subject: t for t in targets}
    out: dict[str, Counter[str]] = {}
    for message in plan:
        target = by_subject[message.subject]
        if not target.consumer:
            continue
        reason = rejection_reason(message.payload, target.message_type, run_id, max_bytes)
        if reason is None:
            raise ValueError(f"a planned {message.kind} message on {message.subject} would be accepted")
        out.setdefault(consumer_group(target.consumer), Counter())[reason] += 1
    return {group: dict(sorted(reasons.items())) for group, reasons in sorted(out.items())}


def counted_rejects(records: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``bus.rejected.<reason>`` of each role's last metrics record, summed per consuming role.

    ``records`` maps a role's metrics name ("allocator", "learner", "actor-<id>") to its
    last record.
    """
    out: dict[str, Counter[str]] = {}
    prefix = "bus.rejected."
    for role, record in records.items():
        group = consumer_group(role)
        counter = out.setdefault(group, Counter())
        for key, value in record.items():
            if key.startswith(prefix) and value:
                counter[key[len(prefix) :]] += int(value)
    return {group: dict(sorted(reasons.items())) for group, reasons in sorted(out.items())}


@dataclass(frozen=True)
class RejectCheck:
    role: str
    sent: int
    expected: dict[str, int]
    counted: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.expected == self.counted

    def differences(self) -> dict[str, int]:
        """counted - expected per reason, only where they differ."""
        reasons = sorted(set(self.expected) | set(self.counted))
        return {
            r: self.counted.get(r, 0) - self.expected.get(r, 0)
            for r in reasons
            if self.counted.get(r, 0) != self.expected.get(r, 0)
        }


def reconcile_rejects(
    expected: Mapping[str, Mapping[str, int]], counted: Mapping[str, Mapping[str, int]]
) -> list[RejectCheck]:
    """One check per role that consumed flood messages or counted any reject."""
    return [
        RejectCheck(
            role, sum(expected.get(role, {}).values()), dict(expected.get(role, {})), dict(counted.get(role, {}))
        )
        for role in sorted(set(expected) | {r for r, c in counted.items() if c})
    ]


# ---------------------------------------------------------------------------- wrong roles


@dataclass(frozen=True)
class WrongRoleAttempt:
    role: str
    action: Literal["publish", "subscribe"]
    subject: str
    what: str


def _policy_key(s: Subjects) -> str:
    return f"$KV.{s.state_bucket}.{Subjects.POLICY_VERSION_KEY}"


def _registry_key(s: Subjects) -> str:
    return f"$KV.{s.state_bucket}.{Subjects.actor_key(FLOOD_ID_PREFIX + 'actor')}"


def wrong_role_attempts(subjects: Subjects) -> list[WrongRoleAttempt]:
    """Operations each role's credentials must be refused (see bus.permissions)."""
    s = subjects
    policy_key, registry_key = _policy_key(s), _registry_key(s)
    weights_chunk = f"$O.{s.weights_bucket}.C.{FLOOD_ID_PREFIX}chunk"
    steal_trees = f"$JS.API.CONSUMER.MSG.NEXT.{s.trees_stream}.{s.learner_consumer}"
    steal_nodes = f"$JS.API.CONSUMER.MSG.NEXT.{s.nodes_stream}.{s.allocator_consumer}"

    def attempts(role: str, *rows: tuple[str, str, str]) -> list[WrongRoleAttempt]:
        return [
            WrongRoleAttempt(role, action, subject, what)  # type: ignore[arg-type]
            for action, subject, what in rows
        ]

    return [
        *attempts(
            "actor",
            ("publish", s.weights_announce, "announce a policy version"),
            ("publish", policy_key, "write the policy version into the weights KV"),
            ("publish", weights_chunk, "write a chunk into the weights object store"),
            ("publish", f"$O.{s.weights_bucket}.M.{FLOOD_ID_PREFIX}meta", "write weights metadata"),
            ("publish", f"$JS.API.STREAM.PURGE.{object_stream(s.weights_bucket)}", "purge the weights"),
            ("publish", s.trees, "publish a CompletedTree"),
            ("publish", s.work_shared, "issue work"),
            ("publish", steal_nodes, "pull the allocator's TurnNodes"),
            ("publish", f"$JS.API.STREAM.DELETE.{s.nodes_stream}", "delete the nodes stream"),
            ("subscribe", s.trees, "read the trees"),
        ),
        *attempts(
            "allocator",
            ("publish", s.weights_announce, "announce a policy version"),
            ("publish", policy_key, "write the policy version into the weights KV"),
            ("publish", weights_chunk, "write a chunk into the weights object store"),
            ("publish", steal_trees, "take the trees that belong to the learner"),
            ("publish", f"$JS.ACK.{s.trees_stream}.{s.learner_consumer}.1.1.1.0.0", "ack the learner's trees"),
            (
                "publish",
                f"$JS.API.CONSUMER.DELETE.{s.trees_stream}.{s.learner_consumer}",
                "delete the learner's consumer",
            ),
            ("publish", s.nodes_from(FLOOD_ACTOR), "publish a TurnNode"),
            ("publish", registry_key, "register an actor"),
        ),
        *attempts(
            "learner",
            ("publish", s.nodes_from(FLOOD_ACTOR), "publish a TurnNode"),
            ("publish", s.work_shared, "issue work"),
            ("publish", s.trees, "publish a CompletedTree"),
            ("publish", registry_key, "register an actor"),
            ("publish", steal_nodes, "pull the allocator's TurnNodes"),
            ("subscribe", s.nodes, "read the TurnNodes"),
        ),
    ]


def attempt_payload(attempt: WrongRoleAttempt, subjects: Subjects, rng: random.Random) -> bytes:
    """What a wrong-role publish carries: a well-formed message where the subject takes one
    (so that nothing but the permission stands in the way), else an empty request."""
    s = subjects
    by_subject: dict[str, type] = {
        s.nodes_from(FLOOD_ACTOR): TurnNode,
        s.work_shared: WorkItem,
        s.trees: CompletedTree,
        s.weights_announce: WeightsAnnouncement,
        _policy_key(s): WeightsAnnouncement,
        _registry_key(s): Heartbeat,
    }
    cls = by_subject.get(attempt.subject)
    return b"" if cls is None else encode(template(cls, s.run_id, rng))


_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"')


def parse_violation(error_text: str) -> tuple[str, str] | None:
    """(action, subject) of a server's permissions-violation error; the client lowercases it."""
    match = _VIOLATION.search(error_text.lower())
    if match is None:
        return None
    return ("publish" if match[1] == "publish" else "subscribe"), match[2]


@dataclass(frozen=True)
class ViolationCheck:
    attempt: WrongRoleAttempt
    sent: int
    refused: int

    @property
    def ok(self) -> bool:
        return self.refused == self.sent


def reconcile_violations(
    attempts: Sequence[WrongRoleAttempt], repeats: int, observed: Mapping[str, Sequence[tuple[str, str]]]
) -> list[ViolationCheck]:
    """Each attempt, sent ``repeats`` times, against the violations its role's client saw.

    ``observed`` maps a role to the parsed (action, subject) of every violation its
    connection reported; subjects compare case-insensitively (see ``parse_violation``).
    """
    seen = {role: Counter((a, s.lower()) for a, s in items) for role, items in observed.items()}
    return [ViolationCheck(a, repeats, seen.get(a.role, Counter())[(a.action, a.subject.lower())]) for a in attempts]
