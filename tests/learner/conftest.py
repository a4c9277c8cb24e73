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
