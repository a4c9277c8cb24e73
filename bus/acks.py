"""Pipelined JetStream publishing: many messages in flight, one ack inbox, every ack checked.

nats-py's ``publish_async`` gives every message its own NUID token, future, done callback
and semaphore slot, and reads every ack with json into a ``PubAck`` through
``dataclasses.fields()``; publishing a node through it cost the client more CPU than
encoding the node. Here a message's reply subject is one wildcard inbox plus a sequence
number, a whole batch shares one future, and the ack handler only parses the ack into the
batch's slot.

What is kept from publishing one message at a time:

- a message counts as published only on the stream's positive ack (a duplicate ack is
  positive: the stream already holds that ``Nats-Msg-Id``);
- ``publish_all`` returns every ack, or raises ``PublishError`` saying how many messages
  were not acked and why. The caller may then resend the whole batch with the same ids:
  the stream's duplicate window stores each message once;
- at most ``max_inflight`` messages of this connection wait for an ack, so a stalled
  stream stops the publisher instead of growing its buffers; a wait that sees no ack for
  ``ack_timeout`` seconds fails (a slow but moving stream does not).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

# The server answers a publish to a subject no stream listens on with this status.
_NO_RESPONDERS = "503"
# A stored or duplicate message's ack exactly as nats-server writes it, read without json
# (which cost the publisher more than this regex by several times); errors, domains and
# anything unexpected take json.
_PLAIN_ACK = re.compile(rb'\{"stream":"([^"\\]+)","seq":(\d+)(,"duplicate": ?true)?\}')


class PublishError(nats.errors.Error):
    """Some messages of a batch were not acked by the stream; none of them may be assumed stored."""

    def __init__(self, unacked: int, sent: int, reason: str) -> None:
        self.unacked = unacked
        self.sent = sent
        self.reason = reason
        super().__init__(f"{unacked} of {sent} messages not acked by the stream: {reason}")

    def __str__(self) -> str:  # nats.errors.Error formats its own fixed text
        return self.args[0]


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


class _Batch:
    """One ``publish_all`` call: a slot per message, resolved by the ack handler."""

    __slots__ = ("acks", "done", "error", "pending", "sealed")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.acks: list[api.PubAck | None] = []
        self.pending = 0
        self.sealed = False  # every message has been sent; done may resolve at pending == 0
        self.error: Exception | None = None
        self.done = done

    def settle(self, index: int, ack: api.PubAck | None, error: Exception | None) -> None:
        if error is None:
            self.acks[index] = ack
        elif self.error is None:
            self.error = error
        self.pending -= 1
        if self.pending == 0 and self.sealed and not self.done.done():
            self.done.set_result(None)


def parse_pub_ack(msg: Msg) -> api.PubAck:
    """The stream's answer to one publish; raises the nats-py error a failed publish raises."""
    if msg.headers and msg.headers.get(api.Header.STATUS) == _NO_RESPONDERS:
        raise nats.js.errors.NoStreamResponseError
    plain = _PLAIN_ACK.fullmatch(msg.data)
    if plain is not None:
        return api.PubAck(stream=plain[1].decode(), seq=int(plain[2]), duplicate=True if plain[3] else None)
    resp = json.loads(msg.data)
    if "error" in resp:
        nats.js.errors.APIError.from_error(resp["error"])  # raises the matching subclass
    # Built directly: PubAck.from_response walks dataclasses.fields() for every ack.
    return api.PubAck(
        stream=resp["stream"], seq=resp["seq"], domain=resp.get("domain"), duplicate=resp.get("duplicate")
    )


class AckWindow:
    """Publishes through one connection with a bounded number of unacked messages."""

    def __init__(self, nc: NatsClient, *, max_inflight: int, ack_timeout: float) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self._nc = nc
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        # Resume below three quarters, so a full window wakes the publisher once per
        # quarter window of acks rather than on every ack.
        self._resume_at = max_inflight * 3 // 4
        self._inbox = ""
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._next_seq = 0
        self._inflight: dict[int, tuple[_Batch, int]] = {}
        self._space = asyncio.Event()
        self._space.set()

    async def _ensure_subscribed(self) -> None:
        async with self._subscribing:
            if self._sub is None:
                self._inbox = self._nc.new_inbox()
                # At most max_inflight acks are ever pending: far inside nats-py's default limits.
                self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        try:
            seq = int(msg.subject[len(self._inbox) + 1 :])
        except ValueError:
            return
        entry = self._inflight.pop(seq, None)
        if entry is None:  # its batch already gave up on it
            return
        batch, index = entry
        try:
            ack, error = parse_pub_ack(msg), None
        except (nats.errors.Error, ValueError, KeyError, TypeError) as err:  # a JSON/shape error too
            ack, error = None, err
        batch.settle(index, ack, error)
        if not self._space.is_set() and len(self._inflight) <= self._resume_at:
            self._space.set()

    async def publish_all(self, messages: Iterable[tuple[str, bytes, str | None]]) -> list[api.PubAck]:
        """Publish ``(subject, payload, msg_id)`` in order; returns the acks in the same order.

        Stops sending at the first failed ack and raises ``PublishError`` once the messages
        already sent are settled (or their acks timed out).
        """
        if self._sub is None:
            await self._ensure_subscribed()
        batch = _Batch(asyncio.get_running_loop().create_future())
        publish, inflight, prefix = self._nc.publish, self._inflight, f"{self._inbox}."
        try:
            for subject, payload, msg_id in messages:
                if len(inflight) >= self.max_inflight:
                    await self._wait_for_space(batch)
                if batch.error is not None:
                    break
                self._next_seq += 1
                seq = self._next_seq
                inflight[seq] = (batch, len(batch.acks))
                batch.acks.append(None)
                batch.pending += 1
                headers = {"Nats-Msg-Id": msg_id} if msg_id else None
                await publish(subject, payload, reply=f"{prefix}{seq}", headers=headers)
            batch.sealed = True
            if batch.pending == 0 and not batch.done.done():
                batch.done.set_result(None)
            await self._wait_for_acks(batch)
        except nats.errors.Error as err:  # e.g. the connection closed mid-batch
            self._forget(batch)
            if isinstance(err, PublishError):
                raise
            raise PublishError(batch.pending, len(batch.acks), f"publish failed: {_describe(err)}") from err
        except BaseException:  # cancelled, or ``messages`` itself raised (an encoding bug)
            self._forget(batch)
            raise
        if batch.error is not None:
            unacked = sum(1 for a in batch.acks if a is None)
            raise PublishError(unacked, len(batch.acks), _describe(batch.error)) from batch.error
        return batch.acks  # type: ignore[return-value]  # every slot holds an ack now

    async def _wait_for_space(self, batch: _Batch) -> None:
        while len(self._inflight) >= self.max_inflight and batch.error is None:
            self._space.clear()
            before = len(self._inflight)
            try:
                await asyncio.wait_for(self._space.wait(), self.ack_timeout)
            except TimeoutError:
                if len(self._inflight) >= before:
                    reason = f"window of {self.max_inflight} full, no ack for {self.ack_timeout} s"
                    raise PublishError(batch.pending, len(batch.acks), reason) from None

    async def _wait_for_acks(self, batch: _Batch) -> None:
        while not batch.done.done():
            before = batch.pending
            try:
                await asyncio.wait_for(asyncio.shield(batch.done), self.ack_timeout)
            except TimeoutError:
                if batch.pending >= before:
                    raise PublishError(batch.pending, len(batch.acks), f"no ack for {self.ack_timeout} s") from None

    def _forget(self, batch: _Batch) -> None:
        """Drop a failed batch's outstanding slots, so late acks are ignored and the window frees."""
        for seq in [s for s, (b, _) in self._inflight.items() if b is batch]:
            del self._inflight[seq]
        self._space.set()
