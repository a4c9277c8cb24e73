"""Versioned wire protocol between actors, allocator and learner."""

from .codec import ProtocolError, decode, encode
from .messages import (
    MESSAGE_TYPES,
    CompletedTree,
    Heartbeat,
    SamplingSpec,
    TaskSpec,
    TreeNodeRecord,
    TurnNode,
    WeightsAnnouncement,
    WorkItem,
)
from .subjects import Subjects

__all__ = [
    "MESSAGE_TYPES",
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
]
