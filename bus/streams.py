"""Read a stream's stored messages without consuming them: what a restarted role replays.

Two readers, because the two retention policies allow different things:

- ``read_stream`` (limits retention: NODES, TREES) walks the stream with an ephemeral
  ordered push consumer, the cheapest way to read many messages in order. It stops at the
  last sequence the stream held when reading began, so a stream that keeps growing under a
  live run still ends the replay.
- ``read_work_queue`` (work-queue retention: WORK) may not add a consumer, because a
  work-queue stream refuses consumers whose filters overlap the actors' durables. It walks
  the stored messages with ``STREAM.MSG.GET`` and ``next_by_subj``, one request per message
  still pending; acknowledged items are gone and cost nothing.

Both yield the stream sequence and the message (the work-queue reader its subject too). A
message that does not decode as ``expected`` (or, given ``run_id``, belongs to another run;
or is larger than ``max_bytes``, the limit the live consumer applies) is yielded as its
``ProtocolError`` so the caller decides how to count it (replay must not stop on a poisoned
message, which the bus's dead-letter sweeper handles on its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from protocol import ProtocolError, decode
from protocol.codec import DEFAULT_MAX_BYTES

T = TypeVar("T")


@dataclass(frozen=True)
class StreamExtent:
    """First and last stored sequence; ``messages == 0`` means empty."""

    first_seq: int
    last_seq: int
    messages: int


async def stream_extent(js: JetStreamContext, stream: str) -> StreamExtent:
    info = await js.stream_info(stream)
    state = info.state
    return StreamExtent(int(state.first_seq or 0), int(state.last_seq or 0), int(state.messages or 0))


def _decoded(data: bytes, expected: type[T], run_id: str | None, max_bytes: int) -> T | ProtocolError:
    try:
        return decode(data, expected, run_id=run_id, max_bytes=max_bytes)
    except ProtocolError as err:
        return err


async def read_stream(
    js: JetStreamContext,
    stream: str,
    subject: str,
    expected: type[T],
    *,
    until_seq: int | None = None,
    idle_timeout_s: float = 5.0,
    run_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> AsyncIterator[tuple[int, str, T | ProtocolError]]:
    """Every stored message on ``subject`` up to ``until_seq`` (default: the last one now), as
    ``(sequence, subject, message)``: with a wildcard filter the subject says which one.

    ``idle_timeout_s`` bounds the wait for the next message; a stream whose tail was
    deleted meanwhile ends there instead of hanging.
    """
    if until_seq is None:
        extent = await stream_extent(js, stream)
        if extent.messages == 0:
            return
        until_seq = extent.last_seq
    if until_seq <= 0:
        return
    # A callback feeding a bounded queue, drained in runs: next_msg's per-message timer made
    # reading about three times slower, and the bound keeps a long stream out of memory.
    queue: asyncio.Queue = asyncio.Queue(maxsize=4096)

    async def enqueue(msg) -> None:
        await queue.put(msg)

    sub = await js.subscribe(
        subject,
        stream=stream,
        cb=enqueue,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        inactive_threshold=60.0,
    )
    try:
        while True:
            try:
                run = [await asyncio.wait_for(queue.get(), timeout=idle_timeout_s)]
            except TimeoutError:
                return
            while not queue.empty() and len(run) < 1024:
                run.append(queue.get_nowait())
            for msg in run:
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > until_seq:
                    return
                yield seq, msg.subject, _decoded(msg.data, expected, run_id, max_bytes)
                if seq >= until_seq or meta.num_pending == 0:
                    return
    finally:
        try:
            await sub.unsubscribe()
        except (TimeoutError, nats.errors.Error):
            pass


async def read_work_queue(
    js: JetStreamContext,
    stream: str,
    subject_filter: str,
    expected: type[T],
    *,
    run_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> AsyncIterator[tuple[int, str, T | ProtocolError]]:
    """Every message still stored in a work-queue stream (pending or held by a consumer),
    as ``(sequence, subject, message)``: the subject says which queue holds it."""
    extent = await stream_extent(js, stream)
    if extent.messages == 0:
        return
    seq = extent.first_seq
    while seq <= extent.last_seq:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject_filter, next=True)
        except nats.js.errors.NotFoundError:
            return
        if raw.seq is None or raw.seq > extent.last_seq:
            return
        yield raw.seq, raw.subject or "", _decoded(raw.data or b"", expected, run_id, max_bytes)
        seq = raw.seq + 1
