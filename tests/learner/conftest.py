"""The learner tests' tiny model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.learner.models import build_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3"))


@pytest.fixture(scope="session", autouse=True)
def _stop_compile_threads():
    """Compiling FlexAttention starts inductor's compile thread pool, which lives until the
    interpreter exits; it is stopped here so that it is not taken for a leaked thread."""
    yield
    import sys

    if "torch._inductor.async_compile" in sys.modules:
        from torch._inductor.async_compile import AsyncCompile

        if AsyncCompile.pool.cache_info().currsize:
            AsyncCompile.pool().shutdown(wait=True)
