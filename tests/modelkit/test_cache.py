from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkit.cache import COMPLETE_MARKER, cache_root, cached_directory, content_key


def test_content_key_ignores_key_order_and_sees_values():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_a_second_call_returns_the_cached_directory_without_building(tmp_path):
    calls = []

    def build(directory: Path) -> dict:
        calls.append(directory)
        (directory / "config.json").write_text("{}")
        return {"made": True}

    first, built_first = cached_directory(tmp_path, "m", "k1", build)
    second, built_second = cached_directory(tmp_path, "m", "k1", build)
    assert (built_first, built_second) == (True, False)
    assert first == second and len(calls) == 1
    assert json.loads((first / COMPLETE_MARKER).read_text())["made"] is True
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary debris


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def build(directory: Path) -> dict:
        (directory / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached_directory(tmp_path, "m", "k2", build)
    assert list(tmp_path.iterdir()) == []


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACERL_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("TRACERL_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "tracerl" / "models"


def test_random_model_build_is_reused(random_model_dir):
    from modelkit.build import build_random_model

    marker = random_model_dir / COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert build_random_model() == random_model_dir
    assert marker.stat().st_mtime_ns == stamp
