"""Typed, versioned messages exchanged over the bus.

Every message is a frozen ``msgspec.Struct``. On the wire it is a msgpack map
``{"schema": <name>, "version": <int>, "body": {...}}``; see ``protocol.codec``.
Bump a message's ``SCHEMA_VERSION`` whenever a field is added, removed or changes meaning:
receivers refuse versions they do not know instead of guessing.

A field's type and range (``msgspec.Meta``) are checked where a message is decoded, which
is where untrusted data enters; ``__post_init__`` holds the cross-field rules, and runs
both when a message is built and when one is decoded. Unknown fields are refused.

Token ids and logprobs are packed arrays (``Int32Array``/``Float32Array``, ``protocol.arrays``)
because they are most of every payload.

Behaviour logprobs (the sampling policy's logprob of each action token, as the engine
computed it) have one name, ``behaviour_logprobs``, one type, float32, and one rule,
``check_behaviour_logprobs``, applied whenever a message carrying them is built or decoded.
The learner trains on them as decoded and checks them no further.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
from msgspec import Meta

from .arrays import Float32Array, Int32Array, pack_fields

FLOAT32_MAX = 3.4028234663852886e38
# The engine's float32 log-softmax can round a near-certain token's logprob a hair above 0.
LOGPROB_TOLERANCE = 1e-6


def check_behaviour_logprobs(action_token_ids: Sequence[int], behaviour_logprobs: Sequence[float]) -> None:
    """One logprob per action token, each at most ``LOGPROB_TOLERANCE``, their sum a finite float32.

    The sum's bound says each value is a finite float32 (a value below float32's range
    would reach the receiver as -inf, so it is refused where it is built, too), and the
    learner's float32 path sums stay finite. NaN fails the comparison, +inf the maximum.
    One ``sum`` and one ``max``, both C loops: several times cheaper than a Python
    ``isfinite`` per value, at 300 values per node.
    """
    if len(action_token_ids) != len(behaviour_logprobs):
        raise ValueError(
            f"action_token_ids ({len(action_token_ids)}) and behaviour_logprobs "
            f"({len(behaviour_logprobs)}) must have the same length"
        )
    if behaviour_logprobs and (
        not sum(behaviour_logprobs) >= -FLOAT32_MAX or max(behaviour_logprobs) > LOGPROB_TOLERANCE
    ):
        raise ValueError(f"behaviour_logprobs must be finite float32 values <= {LOGPROB_TOLERANCE} with a finite sum")


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The options every message and every part of one is declared with (a type checker
    wants ``frozen=True`` repeated on each)."""


AtLeast0 = Annotated[int, Meta(ge=0)]
AtLeast1 = Annotated[int, Meta(ge=1)]


class SamplingSpec(Message, frozen=True):
    """Per-turn sampling parameters that the allocator chooses and the actor obeys."""

    temperature: Annotated[float, Meta(ge=0)] = 1.0
    top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    max_tokens_per_turn: AtLeast1 = 64
    seed: int | None = None


class TaskSpec(Message, frozen=True):
    """Which environment and which task instance; ``params`` is the environment's own spec."""

    env: str
    task_id: str
    params: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_plain_data(self.params, "params")


MAX_PLAIN_DEPTH = 16


def check_plain_data(value: Any, path: str, depth: int = 0) -> None:
    """A free-form field (task params) holds only finite numbers, strings, bytes, booleans,
    None, lists and string-keyed maps, nested at most ``MAX_PLAIN_DEPTH`` deep."""
    if depth > MAX_PLAIN_DEPTH:
        raise ValueError(f"{path}: nested more than {MAX_PLAIN_DEPTH} deep")
    if value is None or type(value) in (bool, int, str, bytes):
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{path}: non-finite number {value}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain_data(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: non-string key {key!r}")
            check_plain_data(item, f"{path}.{key}", depth + 1)
    else:
        raise ValueError(f"{path}: unsupported value of type {type(value).__name__}")


class TurnNode(Message, frozen=True):
    """One ReAct turn: the policy's thought+action tokens and the environment's reply.

    ``node_id`` is made by ``node_id_for``: it names the work item, the sampling (one run
    of the item by one actor), the sample index and the depth. A redelivered work item is
    sampled afresh under a new sampling, so its nodes never take an earlier sampling's ids
    (whose tokens differ), and a node's parent is its own sampling's or the item's parent.
    ``parent_id`` is ``None`` for the first turn under the root (the prompt).
    ``prompt_token_ids`` is filled only on first turns: it is the root's context.
    ``env_snapshot`` is the environment state *after* this turn, enough to branch from it.
    ``behaviour_logprobs`` travel as float32: the engine computes them in float32, so the
    wire loses nothing. A value with more precision arrives rounded to the nearest float32.
    Version 1 sent them as float64 ``action_logprobs``, version 2 as float32 under that name.
    """

    SCHEMA: ClassVar[str] = "turn_node"
    SCHEMA_VERSION: ClassVar[int] = 3

    run_id: str
    tree_id: str
    node_id: str
    parent_id: str | None
    work_id: str
    actor_id: str
    task: TaskSpec
    depth: AtLeast1
    policy_version: AtLeast0
    prompt_token_ids: Int32Array
    action_token_ids: Int32Array
    behaviour_logprobs: Float32Array
    observation_token_ids: Int32Array
    action_text: str
    observation_text: str
    env_snapshot: bytes
    env_score: float
    done: bool
    reward: float | None
    created_at: float

    def __post_init__(self) -> None:
        pack_fields(self, _TURN_NODE_ARRAYS)
        check_behaviour_logprobs(self.action_token_ids, self.behaviour_logprobs)
        if self.done and self.reward is None:
            raise ValueError("a terminal node must carry a reward")
        if (self.depth == 1) != (self.parent_id is None):
            raise ValueError("exactly the depth-1 nodes have no parent")


_TURN_NODE_ARRAYS = {
    "prompt_token_ids": Int32Array,
    "action_token_ids": Int32Array,
    "behaviour_logprobs": Float32Array,
    "observation_token_ids": Int32Array,
}
_RECORD_ARRAYS = {k: v for k, v in _TURN_NODE_ARRAYS.items() if k != "prompt_token_ids"}
_PROMPT = {"prompt_token_ids": Int32Array}
_PREFIX = {"prefix_token_ids": Int32Array}


def node_id_for(work_id: str, sampling: str, sample_index: int, depth: int) -> str:
    """``<work id>/<sampling>/<sample index>/<depth>``; ``sampling`` must not contain ``/``."""
    if "/" in sampling:
        raise ValueError(f"sampling {sampling!r} contains '/'")
    return f"{work_id}/{sampling}/{sample_index}/{depth}"


def chain_slot(node_id: str) -> int | str:
    """Which of its work item's ``num_samples`` chains a node belongs to: its sample index,
    the same in every sampling of the item. An id ``node_id_for`` did not make is a slot of
    its own."""
    parts = node_id.rsplit("/", 3)
    if len(parts) == 4 and parts[2].isdecimal() and parts[3].isdecimal():
        return int(parts[2])
    return node_id


def chain_ends(node: TurnNode, prefix_depth: int, max_turns: int) -> bool:
    """Whether ``node`` is the last turn a chain of a work item (starting after ``prefix_depth``,
    allowed ``max_turns``) generates: its episode ended, or the allowance is used up (the
    chain stays open for a later item)."""
    return node.done or node.depth >= prefix_depth + max_turns


class WorkItem(Message, frozen=True):
    """A unit of sampling work for an actor.

    ``kind == "root"``: roll out ``task`` from scratch ``num_samples`` times, each a new
    chain under the root of ``tree_id``.
    ``kind == "branch"``: continue from node ``parent_id`` ``num_samples`` times. The actor
    feeds ``prefix_token_ids`` verbatim (never re-tokenised) and restores
    ``env_snapshot``; ``prefix_depth`` is that node's depth.
    ``max_turns`` counts the turns each sample may generate *in this item*, on top of the
    prefix (search strategies advance one turn at a time); the environment's own turn cap
    still ends an episode earlier. A chain that stops at ``max_turns`` without being done
    is a finished chain for the allocator, not a failure.
    ``shard`` is the allocator shard that issued the item (``allocator.shard``): the actor
    publishes the item's nodes on that shard's nodes subject (``Subjects.nodes_from``).
    Version 1 had no ``shard``.
    """

    SCHEMA: ClassVar[str] = "work_item"
    SCHEMA_VERSION: ClassVar[int] = 2

    run_id: str
    work_id: str
    tree_id: str
    kind: Literal["root", "branch"]
    task: TaskSpec
    num_samples: AtLeast1
    parent_id: str | None
    prefix_depth: AtLeast0
    prefix_token_ids: Int32Array
    env_snapshot: bytes
    sampling: SamplingSpec
    max_turns: AtLeast1
    min_policy_version: AtLeast0
    issued_at: float
    shard: AtLeast0

    def __post_init__(self) -> None:
        pack_fields(self, _PREFIX)
        if self.kind == "root" and (self.parent_id is not None or self.prefix_depth != 0):
            raise ValueError("a root work item has no parent and prefix_depth 0")
        if self.kind == "branch" and (self.parent_id is None or self.prefix_depth < 1 or not self.prefix_token_ids):
            raise ValueError("a branch work item needs parent_id, prefix_depth >= 1 and prefix tokens")

    def ends_chain(self, node: TurnNode) -> bool:
        return chain_ends(node, self.prefix_depth, self.max_turns)

    @classmethod
    def single_episode(
        cls,
        *,
        run_id: str,
        tree_id: str,
        task: TaskSpec,
        temperature: float,
        seed: int,
        max_tokens_per_turn: int,
        max_turns: int,
        min_policy_version: int,
        issued_at: float,
    ) -> WorkItem:
        """One rollout of ``task`` from scratch: what evaluations and held-out probes ask for."""
        return cls(
            run_id=run_id,
            work_id=f"{tree_id}-w",
            tree_id=tree_id,
            kind="root",
            task=task,
            num_samples=1,
            parent_id=None,
            prefix_depth=0,
            prefix_token_ids=[],
            env_snapshot=b"",
            sampling=SamplingSpec(temperature=temperature, max_tokens_per_turn=max_tokens_per_turn, seed=seed),
            max_turns=max_turns,
            min_policy_version=min_policy_version,
            issued_at=issued_at,
            # Held-out probes are shard 0's alone (allocator.shard), and evaluations read no subject.
            shard=0,
        )


class TreeNodeRecord(Message, frozen=True):
    """A node as the learner needs it: place in the tree, tokens, behaviour logprobs, version, reward."""

    node_id: str
    parent_id: str | None
    depth: AtLeast1
    policy_version: AtLeast0
    action_token_ids: Int32Array
    behaviour_logprobs: Float32Array
    observation_token_ids: Int32Array
    done: bool
    reward: float | None

    def __post_init__(self) -> None:
        pack_fields(self, _RECORD_ARRAYS)
        check_behaviour_logprobs(self.action_token_ids, self.behaviour_logprobs)


class CompletedTree(Message, frozen=True):
    """A finished rollout tree for one prompt, ready for the learner.

    ``status`` is ``"partial"`` when the allocator gave up waiting for missing branches;
    the learner still trains on the complete root-to-leaf paths it contains.
    ``shard`` is the allocator shard that built the tree, one of ``shard_count``: a learner
    step is the trees of one ``allocator_step`` from every shard, and ``step_tree_count``
    counts the trees of this tree's shard (``learner.batching``).
    Version 1 nodes carried float64 ``action_logprobs``, and the allocator's backup value,
    visit count and env score, which no receiver read. Version 2 had no shard fields.
    """

    SCHEMA: ClassVar[str] = "completed_tree"
    SCHEMA_VERSION: ClassVar[int] = 3

    run_id: str
    tree_id: str
    task: TaskSpec
    strategy: str
    allocator_step: int
    prompt_token_ids: Int32Array
    nodes: list[TreeNodeRecord]
    status: Literal["complete", "partial"]
    budget_turns: int
    # How many trees the allocator (shard) emitted for this step: the learner's batch boundary.
    step_tree_count: AtLeast1
    created_at: float
    shard: AtLeast0
    shard_count: AtLeast1

    def __post_init__(self) -> None:
        pack_fields(self, _PROMPT)
        if self.shard >= self.shard_count:
            raise ValueError(f"shard {self.shard} is not one of {self.shard_count} shards")
        ids = {n.node_id for n in self.nodes}
        if len(ids) != len(self.nodes):
            raise ValueError("duplicate node ids in tree")
        for n in self.nodes:
            if n.parent_id is not None and n.parent_id not in ids:
                raise ValueError(f"node {n.node_id} has unknown parent {n.parent_id}")


class WeightsAnnouncement(Message, frozen=True):
    """A new policy version is in the object store under ``object_name``."""

    SCHEMA: ClassVar[str] = "weights_announcement"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str
    policy_version: int
    object_name: str
    sha256: str
    num_bytes: int
    format: Literal["safetensors"]
    created_at: float


class Heartbeat(Message, frozen=True):
    """An actor's liveness and load, written to the run-state KV bucket."""

    SCHEMA: ClassVar[str] = "heartbeat"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str
    actor_id: str
    policy_version: int
    inflight: int
    capacity: int
    tokens_generated: int
    turns_generated: int
    started_at: float
    sent_at: float


class BroadcastJoin(Message, frozen=True):
    """An actor asks to receive weights by broadcast, written to its own ``broadcast.<id>`` key.

    The learner takes it into the next broadcast group it forms (``weightsync.membership``);
    an actor writes a fresh one (a later ``sent_at``) to be taken in again after a failure.
    """

    SCHEMA: ClassVar[str] = "broadcast_join"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str
    actor_id: str
    sent_at: float


class BroadcastGroup(Message, frozen=True):
    """The learner's current broadcast group (one epoch), under the ``weights_broadcast`` key.

    The learner is rank 0; ``members[i]`` is rank i + 1. ``group_id`` names the learner
    process that formed it, so a restarted learner's epoch 1 is not mistaken for an old one.
    ``host``/``port`` is the learner's TCP rendezvous store.
    """

    SCHEMA: ClassVar[str] = "broadcast_group"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str
    group_id: str
    epoch: AtLeast1
    host: str
    port: Annotated[int, Meta(ge=1, le=65535)]
    backend: Literal["gloo", "nccl"]
    members: list[str]
    bucket_bytes: AtLeast1
    created_at: float

    def __post_init__(self) -> None:
        if len(set(self.members)) != len(self.members):
            raise ValueError("members must be distinct")


MESSAGE_TYPES: dict[str, type[Any]] = {
    cls.SCHEMA: cls
    for cls in (TurnNode, WorkItem, CompletedTree, WeightsAnnouncement, Heartbeat, BroadcastJoin, BroadcastGroup)
}

S = TypeVar("S", bound=msgspec.Struct)


def replace(struct: S, **changes: Any) -> S:
    """A copy of a message (or a config, ``tracerl.config``) with ``changes``, its cross-field
    rules (``__post_init__``) checked again; declared ranges are checked where data is decoded."""
    return msgspec.structs.replace(struct, **changes)
