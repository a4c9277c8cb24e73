"""An actor's stop ends even when a library swallows the cancellation of one of its loops.

The bus double reproduces the sighting that hung CI: a heartbeat's request path (nats-py's
``asyncio.wait_for`` on Python 3.11) drops the cancellation that races its completion, so
the heartbeat loop never sees it.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import nats.errors
import pytest
import torch
from safetensors.torch import save_file

from actors.config import ActorConfig
from actors.service import ActorService
from tests.actors.doubles import CountingEnvironment, ReloadingEngine
from tracerl.config import RunConfig
from tracerl.lifecycle import EXIT_STOP_OVERRAN, LOOPS_END_S, run_role


class IdleConsumer:
    def __init__(self, durable: str) -> None:
        self.durable = durable
        self.sub = self
        self.closed = False

    async def fetch(self, batch: int, timeout: float):
        await asyncio.sleep(timeout)
        raise nats.errors.TimeoutError

    async def close(self) -> None:
        self.closed = True


class SwallowingBus:
    """Serves no work; every heartbeat after the first parks, and drops a cancellation."""

    def __init__(self, watch_swallows: bool = False) -> None:
        self.counters: dict[str, int] = {}
        self.beats_started = 0
        self.cancels_swallowed = 0
        self.watch_swallows = watch_swallows
        self.consumers: list[IdleConsumer] = []
        self.deleted: list[str] = []
        self.js = SimpleNamespace(consumer_info=self._consumer_info, key_value=self._key_value)

    async def get_weights_announcement(self):
        return None

    async def put_actor(self, beat) -> None:
        self.beats_started += 1
        if self.beats_started == 1:
            return
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancels_swallowed += 1  # returns normally: the caller never learns it was cancelled

    async def watch_weights(self, stop=None):
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not self.watch_swallows:
                    raise
                self.cancels_swallowed += 1
        yield  # an async generator, like the real watch

    async def pull_consumer(self, stream: str, durable: str, message_type):
        consumer = IdleConsumer(durable)
        self.consumers.append(consumer)
        return consumer

    async def ensure_actor_consumer(self, actor_id: str, limits) -> str:
        return f"own-{actor_id}"

    async def _consumer_info(self, stream: str, durable: str):
        return SimpleNamespace(config=SimpleNamespace(ack_wait=30.0, max_deliver=5))

    async def _key_value(self, bucket: str):
        bus = self

        class KV:
            async def delete(self, key: str) -> None:
                bus.deleted.append(key)

        return KV()


def make_service(tmp_path, bus: SwallowingBus) -> ActorService:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    save_file({"w": torch.zeros(2, 2)}, model_dir / "model.safetensors")
    config = ActorConfig(
        run=RunConfig(run_id="t", run_dir=str(tmp_path / "run")),
        model_dir=str(model_dir),
        actor_id="a1",
        heartbeat_interval_s=0.02,
        metrics_interval_s=60.0,
        pull_timeout_s=0.1,
    )
    return ActorService(
        config, ReloadingEngine(tokenizer=None), bus, "a1", make_env=lambda _name: CountingEnvironment()
    )


async def stop_when(service: ActorService, ready, seconds: list[float], within_s: float = 10.0) -> int:
    serving = asyncio.create_task(service.serve())
    deadline = time.monotonic() + 10.0
    while not ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert ready(), "the double never reached the state the test stops in"
    started = time.monotonic()
    service.stop.set()
    code = await asyncio.wait_for(serving, timeout=within_s)
    seconds.append(time.monotonic() - started)
    return code


def test_a_heartbeat_that_swallows_its_cancellation_still_ends_the_stop(tmp_path):
    bus = SwallowingBus()
    service = make_service(tmp_path, bus)
    took: list[float] = []
    code = run_role(stop_when(service, lambda: bus.beats_started >= 2, took))
    seconds = took[0]
    # The loop waits on the stop event, so the dropped cancel costs nothing.
    assert bus.cancels_swallowed == 1
    assert code == 0
    assert seconds < LOOPS_END_S
    assert all(c.closed for c in bus.consumers) and len(bus.consumers) == 2
    assert bus.deleted == ["actors.a1"]


def test_a_loop_that_never_ends_is_left_behind_within_the_bound_and_the_exit_is_non_zero(tmp_path):
    bus = SwallowingBus(watch_swallows=True)
    service = make_service(tmp_path, bus)
    took: list[float] = []
    # run_role, not asyncio.run: the latter waits forever for the task that never ends.
    code = run_role(stop_when(service, lambda: bus.beats_started >= 1, took, within_s=LOOPS_END_S + 10))
    seconds = took[0]
    assert bus.cancels_swallowed >= 1
    assert code == EXIT_STOP_OVERRAN
    assert LOOPS_END_S - 0.5 < seconds < LOOPS_END_S + 5
    # The rest of the stop still ran: consumers closed, registry entry removed.
    assert all(c.closed for c in bus.consumers)
    assert bus.deleted


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_sleep_or_stop_wakes_on_the_event_and_reports_it(interval):
    from tracerl.lifecycle import sleep_or_stop

    async def main():
        stop = asyncio.Event()
        assert await sleep_or_stop(stop, interval) is False
        asyncio.get_running_loop().call_later(0.05, stop.set)
        started = time.monotonic()
        assert await sleep_or_stop(stop, 30.0) is True
        return time.monotonic() - started

    assert asyncio.run(main()) < 5.0
