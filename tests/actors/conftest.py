"""One vLLM engine for the whole session: start-up costs far more than any test using it."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


class EngineRunner:
    """Runs a PolicyEngine on its own event loop thread so sync tests can share it."""

    def __init__(self, model_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from actors.config import EngineSettings
        from actors.engine import PolicyEngine

        self.model_dir = model_dir
        self.engine = self.run(PolicyEngine.start(model_dir, EngineSettings(max_model_len=1024)))

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def engine_model_dir(random_model_dir, tmp_path_factory) -> Path:
    """A private copy: the parity test overwrites weights next to it."""
    target = tmp_path_factory.mktemp("actor-engine") / "model"
    shutil.copytree(random_model_dir, target)
    return target


@pytest.fixture(scope="session")
def engine_runner(engine_model_dir) -> Iterator[EngineRunner]:
    runner = EngineRunner(engine_model_dir)
    yield runner
    runner.close()
