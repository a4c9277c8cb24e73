"""The broadcast shell: the learner's ``BroadcastSender`` (rank 0) and an actor's ``BroadcastReceiver``.

The learner hosts a ``torch.distributed`` TCP store, the rendezvous of every epoch; where it
is, and who is in the current epoch, go through the bus's KV (``BroadcastGroup``), and the
actors ask to join there (``BroadcastJoin``). The rules of who is in which epoch are
``weightsync.membership``; the frames on the wire are ``weightsync.frames``.

Per epoch ``e`` the store holds ``e<e>/arrived/<actor id>`` (a member checked in),
``e<e>/decision`` (``go``, or ``abandon`` when someone did not check in) and, under
``e<e>/pg/``, the process group's own rendezvous. Collectives block, so they run in daemon
threads: a stopping process is never held by a member waiting for the next version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from protocol import BroadcastGroup, BroadcastJoin, WeightsAnnouncement
from tracerl.config import WeightsConfig
from tracerl.lifecycle import sleep_or_stop
from tracerl.logs import get_logger

from .frames import HEADER_BYTES, FrameKind, bucket_views, decode_header, encode_header, flat_bytes
from .membership import plan_epoch, split_check_ins, wanted_members

log = get_logger(__name__)

T = TypeVar("T")
GO, ABANDON = b"go", b"abandon"
_CHECK_IN_POLL_S = 0.05
REJOIN_BACKOFF_MAX_S = 600.0
#: gloo's shutdown returned at once here, even with a receive pending in another thread; this
#: only bounds a backend that blocks.
SHUTDOWN_TIMEOUT_S = 10.0


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread (``asyncio.to_thread``'s pool would hold the process's exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, False, err)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=target, name=getattr(fn, "__name__", "weightsync"), daemon=True).start()
    return await future


def epoch_prefix(epoch: int) -> str:
    return f"e{epoch}/"


def device_for(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def make_process_group(store: Any, prefix: str, rank: int, size: int, backend: str, timeout_s: float) -> Any:
    """A process group of its own (the learner's training group, if any, is untouched)."""
    prefixed = dist.PrefixStore(prefix, store)
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, size, timeout)
    if not dist.is_nccl_available():
        raise RuntimeError("weights.backend nccl needs a CUDA build of torch")
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(prefixed, rank, size, options)


def shut_down_group(group: Any) -> None:
    """Shut ``group`` down now, while the interpreter is whole, rather than leave it to the
    garbage collector: a gloo group's workers can outlive the interpreter holding finished work
    whose tensors view Python buffers (every bucket here does), and releasing them then needs
    the GIL and aborts the process (SIGABRT at exit, after a clean stop)."""
    try:
        group.shutdown()
    except Exception as err:  # noqa: BLE001 - a broken group is being left anyway
        log.debug("weights_broadcast_shutdown_failed", error=repr(err))


async def leave_group(group: Any, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """``shut_down_group`` off the event loop, bounded: a stop is never held by it."""
    try:
        await asyncio.wait_for(in_daemon_thread(shut_down_group, group), timeout_s)
    except TimeoutError:
        log.warning("weights_broadcast_shutdown_timed_out", timeout_s=timeout_s)


def end_role(status: int, weights: WeightsConfig) -> int:
    """A role's exit status, or, for a process that took part in broadcast groups, an exit with
    it now that its own clean-up is done, without the interpreter's and the C++ runtime's
    teardown. Even with every group shut down, an actor that had received all its versions and
    stopped cleanly aborted in that teardown (``terminate called without an active exception``,
    no Python frame left) twice in full test-suite runs under load; nothing is left for the
    teardown to do."""
    if weights.transport != "broadcast":
        return status
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its pipe gone
            pass
    logging.shutdown()
    os._exit(status)


def _broadcast(group: Any, tensor: torch.Tensor) -> Any:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    options.rootTensor = 0
    return group.broadcast([tensor], options)


def send_frame(group: Any, header: bytes, blob: bytes | None, bucket_bytes: int, device: torch.device) -> None:
    """Rank 0: the header, then (for a version) the blob's buckets. On the CPU every bucket is
    a view of the blob and all are queued at once; on a GPU one staging bucket is reused."""
    works = [_broadcast(group, flat_bytes(bytearray(header)).to(device))]
    if blob is not None:
        buckets = bucket_views(flat_bytes(blob), bucket_bytes)
        if device.type == "cpu":
            works += [_broadcast(group, bucket) for bucket in buckets]
        else:
            staging = torch.empty(bucket_bytes, dtype=torch.uint8, device=device)
            for bucket in buckets:
                part = staging[: bucket.numel()]
                part.copy_(bucket)
                _broadcast(group, part).wait()
    for work in works:
        work.wait()


def receive_header(group: Any, device: torch.device) -> bytearray:
    header = torch.zeros(HEADER_BYTES, dtype=torch.uint8, device=device)
    _broadcast(group, header).wait()
    return bytearray(header.cpu().numpy().tobytes())


def receive_blob(group: Any, num_bytes: int, bucket_bytes: int, device: torch.device) -> bytearray:
    """Rank > 0: the buckets of one version, written straight into the returned buffer on the CPU."""
    blob = bytearray(num_bytes)
    buckets = bucket_views(flat_bytes(blob), bucket_bytes)
    if device.type == "cpu":
        for work in [_broadcast(group, bucket) for bucket in buckets]:
            work.wait()
        return blob
    staging = torch.empty(bucket_bytes, dtype=torch.uint8, device=device)
    for bucket in buckets:
        part = staging[: bucket.numel()]
        _broadcast(group, part).wait()
        bucket.copy_(part.cpu())
    return blob


def wait_for_check_ins(store: Any, prefix: str, members: tuple[str, ...], timeout_s: float) -> tuple[str, ...]:
    """The members that checked in within ``timeout_s`` (all of them as soon as they have)."""
    deadline = time.monotonic() + timeout_s
    arrived: set[str] = set()
    while True:
        arrived |= {m for m in members if m not in arrived and store.check([f"{prefix}arrived/{m}"])}
        if len(arrived) == len(members) or time.monotonic() >= deadline:
            return tuple(m for m in members if m in arrived)
        time.sleep(_CHECK_IN_POLL_S)


class BroadcastSender:
    """The learner's side: rank 0 of every epoch; ``send`` never raises for a group's failure."""

    def __init__(self, bus: Any, config: WeightsConfig, run_id: str, actor_timeout_s: float) -> None:
        self.bus = bus
        self.config = config
        self.run_id = run_id
        self.actor_timeout_s = actor_timeout_s
        # A fresh id per learner process: actors tell its epoch 1 from an earlier learner's.
        self.group_id = uuid.uuid4().hex[:12]
        self.store: Any = None
        self.port = 0
        self.epoch = 0
        self.group: Any = None
        self.members: tuple[str, ...] = ()
        self.left_out_at: dict[str, float] = {}
        self.counts: Counter[str] = Counter()

    async def start(self) -> None:
        def host() -> Any:
            return dist.TCPStore(
                self.config.host,
                self.config.port,
                is_master=True,
                wait_for_workers=False,
                timeout=timedelta(seconds=self.config.join_timeout_s),
            )

        self.store = await in_daemon_thread(host)
        self.port = self.store.port
        log.info("weights_broadcast_listening", host=self.config.host, port=self.port, group_id=self.group_id)

    async def send(self, blob: bytes, announcement: WeightsAnnouncement) -> tuple[str, ...]:
        """Broadcast one version to the group it should go to; the members it reached."""
        joins = await self.bus.get_broadcast_joins()
        beats = await self.bus.get_actors()
        wanted = wanted_members(joins, beats, self.left_out_at, time.time(), self.actor_timeout_s)
        plan = plan_epoch(self.members if self.group is not None else None, wanted)
        if plan.action != "keep":
            await self.close_group()
        if plan.action == "form":
            await self._form(plan.members)
        if self.group is None:
            return ()
        header = encode_header(FrameKind.VERSION, announcement)
        device = device_for(self.config.backend)
        began = time.perf_counter()
        try:
            await in_daemon_thread(send_frame, self.group, header, blob, self.config.bucket_bytes, device)
        except Exception as err:  # noqa: BLE001 - a member died or stalled: the object store has the version
            self.counts["broadcast_failed"] += 1
            log.warning(
                "weights_broadcast_failed",
                policy_version=announcement.policy_version,
                epoch=self.epoch,
                error=repr(err),
            )
            group, self.group, self.members = self.group, None, ()
            await leave_group(group)
            return ()
        seconds = time.perf_counter() - began
        self.counts["broadcast_versions"] += 1
        log.info(
            "weights_broadcast",
            policy_version=announcement.policy_version,
            epoch=self.epoch,
            members=list(self.members),
            bytes=len(blob),
            seconds=round(seconds, 3),
        )
        return self.members

    async def _form(self, members: tuple[str, ...]) -> None:
        """Form the next epoch of ``members``; once more with those that checked in if some did not."""
        for _ in range(2):
            self.epoch += 1
            prefix = epoch_prefix(self.epoch)
            group = BroadcastGroup(
                run_id=self.run_id,
                group_id=self.group_id,
                epoch=self.epoch,
                host=self.config.host,
                port=self.port,
                backend=self.config.backend,
                members=list(members),
                bucket_bytes=self.config.bucket_bytes,
                created_at=time.time(),
            )
            await self.bus.put_broadcast_group(group)
            arrived, missing = split_check_ins(
                members,
                await in_daemon_thread(wait_for_check_ins, self.store, prefix, members, self.config.join_timeout_s),
            )
            for actor_id in missing:
                self.left_out_at[actor_id] = group.created_at
            if missing:
                self.counts["members_left_out"] += len(missing)
                log.warning("weights_broadcast_left_out", epoch=self.epoch, missing=list(missing))
                self.store.set(f"{prefix}decision", ABANDON)
                members = arrived
                if not members:
                    return
                continue
            self.store.set(f"{prefix}decision", GO)
            try:
                self.group = await in_daemon_thread(
                    make_process_group,
                    self.store,
                    f"{prefix}pg/",
                    0,
                    len(members) + 1,
                    self.config.backend,
                    self.config.broadcast_timeout_s,
                )
            except Exception as err:  # noqa: BLE001 - a member died between its check-in and connecting
                self.counts["form_failed"] += 1
                log.warning("weights_broadcast_form_failed", epoch=self.epoch, error=repr(err))
                return
            self.members = members
            self.counts["epochs"] += 1
            log.info("weights_broadcast_group", epoch=self.epoch, members=list(members))
            return

    async def close_group(self) -> None:
        """Tell the members the epoch is over (best effort: a broken group just fails on their side)."""
        group, self.group, self.members = self.group, None, ()
        if group is None:
            return
        try:
            await asyncio.wait_for(
                in_daemon_thread(
                    send_frame, group, encode_header(FrameKind.CLOSE), None, 1, device_for(self.config.backend)
                ),
                self.config.join_timeout_s,
            )
        except Exception as err:  # noqa: BLE001 - the members find out when the connection goes
            log.info("weights_broadcast_close_failed", epoch=self.epoch, error=repr(err))
        await leave_group(group)


Deliver = Callable[[WeightsAnnouncement, bytearray], Awaitable[None]]


class BroadcastReceiver:
    """An actor's side: ask to join, take part in each epoch it is a member of, and hand every
    received version to ``deliver`` (which verifies it as an object-store blob is verified)."""

    def __init__(self, bus: Any, config: WeightsConfig, run_id: str, actor_id: str) -> None:
        self.bus = bus
        self.config = config
        self.run_id = run_id
        self.actor_id = actor_id
        self.counts: Counter[str] = Counter()

    async def ask_to_join(self) -> None:
        await self.bus.put_broadcast_join(
            BroadcastJoin(run_id=self.run_id, actor_id=self.actor_id, sent_at=time.time())
        )

    async def run(self, stop: asyncio.Event, deliver: Deliver) -> None:
        """Until ``stop``: ask to join, then be a member of each epoch that lists this actor.

        After a failed epoch the actor asks again, later each time it fails in a row (up to
        ``REJOIN_BACKOFF_MAX_S``): an actor that cannot reach the learner costs the learner one
        ``join_timeout_s`` per attempt, not one per version."""
        seen: tuple[str, int] | None = None
        backoff_s = self.config.poll_interval_s
        asked = False
        while not stop.is_set():
            try:
                if not asked:
                    await self.ask_to_join()
                    asked = True
                group = await self.bus.get_broadcast_group()
            except Exception as err:  # noqa: BLE001 - the bus is back in a moment: try again after the poll interval
                log.debug("weights_broadcast_read_failed", error=repr(err))
                group = None
            if group is None or (group.group_id, group.epoch) == seen or self.actor_id not in group.members:
                await sleep_or_stop(stop, self.config.poll_interval_s)
                continue
            seen = (group.group_id, group.epoch)
            received_before = self.counts["versions_received"]
            failure: Exception | None = None
            try:
                await self._member_of(group, stop, deliver)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the object store has every version; join a later epoch
                failure = err
            if self.counts["versions_received"] > received_before:
                backoff_s = self.config.poll_interval_s  # it worked for a while: not failing in a row
            if failure is not None:
                self.counts["group_failed"] += 1
                log.warning("weights_broadcast_left", epoch=group.epoch, error=repr(failure), rejoin_in_s=backoff_s)
                await sleep_or_stop(stop, backoff_s)
                backoff_s = min(2 * backoff_s, REJOIN_BACKOFF_MAX_S)
                asked = False

    async def _member_of(self, group: BroadcastGroup, stop: asyncio.Event, deliver: Deliver) -> None:
        process_group = await in_daemon_thread(self._join, group)
        if process_group is None:
            # Someone (maybe this actor, checking in late) was missing: asking again puts it in a later epoch.
            self.counts["epochs_abandoned"] += 1
            raise RuntimeError(f"epoch {group.epoch} abandoned by the learner")
        self.counts["epochs_joined"] += 1
        log.info("weights_broadcast_joined", epoch=group.epoch, rank=group.members.index(self.actor_id) + 1)
        device = device_for(group.backend)
        try:
            while not stop.is_set():
                header = decode_header(await in_daemon_thread(receive_header, process_group, device), self.run_id)
                if header.kind is FrameKind.CLOSE or header.announcement is None:
                    log.info("weights_broadcast_closed", epoch=group.epoch)
                    return
                blob = await in_daemon_thread(
                    receive_blob, process_group, header.announcement.num_bytes, group.bucket_bytes, device
                )
                self.counts["versions_received"] += 1
                await deliver(header.announcement, blob)
        finally:
            await leave_group(process_group)

    def _join(self, group: BroadcastGroup) -> Any:
        """Check in at the learner's store and connect, or None if the learner abandoned the epoch."""
        prefix = epoch_prefix(group.epoch)
        store = dist.TCPStore(
            group.host, group.port, is_master=False, timeout=timedelta(seconds=self.config.join_timeout_s)
        )
        store.set(f"{prefix}arrived/{self.actor_id}", "1")
        store.wait([f"{prefix}decision"], timedelta(seconds=2 * self.config.join_timeout_s + 5))
        if store.get(f"{prefix}decision") != GO:
            return None
        rank = group.members.index(self.actor_id) + 1
        return make_process_group(
            store, f"{prefix}pg/", rank, len(group.members) + 1, group.backend, self.config.idle_timeout_s
        )
