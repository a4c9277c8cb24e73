"""Versioned wire protocol between actors, allocator and learner."""

from .codec import ProtocolError, decode, encode, plain_body
from .messages import (
    MESSAGE_TYPES,
    BroadcastGroup,
    BroadcastJoin,
    CompletedTree,
    Heartbeat,
    SamplingSpec,
    TaskSpec,
    TreeNodeRecord,
    TurnNode,
    WeightsAnnouncement,
    WorkItem,
    replace,
)
from .subjects import Subjects

__all__ = [
    "MESSAGE_TYPES",
    "BroadcastGroup",
    "BroadcastJoin",
    "CompletedTree",
    "Heartbeat",
    "ProtocolError",
    "SamplingSpec",
    "Subjects",
    "TaskSpec",
    "TreeNodeRecord",
    "TurnNode",
    "WeightsAnnouncement",
    "WorkItem",
    "decode",
    "encode",
    "plain_body",
    "replace",
]
