from __future__ import annotations

import json

import pytest

from modelkit.build import build_command
from modelkit.cache import COMPLETE_MARKER
from tests.fixtures.models import TEST_BUILD_OVERRIDES


def test_bad_config_values_are_reported_not_raised(capsys):
    assert build_command(None, ["training.steps=many"]) == 2
    err = capsys.readouterr().err
    assert "training.steps" in err and "Traceback" not in err


def test_an_unknown_tokenizer_whitespace_mode_is_reported_before_any_work(capsys):
    assert build_command(None, ["tokenizer_whitespace=tabs"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer_whitespace" in err and "prefix" in err and "Traceback" not in err


def test_missing_config_file_is_reported(tmp_path, capsys):
    assert build_command(str(tmp_path / "absent.yaml"), []) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_is_untied_and_reused_from_the_cache(embedded_model_dir, capsys, monkeypatch):
    # build_command routes logs to the real stderr; pytest closes its capture stream later.
    monkeypatch.setattr("tracerl.logs.configure_logging", lambda *args, **kwargs: None)
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["architectures"] == ["Qwen3ForCausalLM"]
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (embedded_model_dir / name).is_file()
    stamp = (embedded_model_dir / COMPLETE_MARKER).stat().st_mtime_ns
    assert build_command(None, TEST_BUILD_OVERRIDES) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(embedded_model_dir)
    assert (embedded_model_dir / COMPLETE_MARKER).stat().st_mtime_ns == stamp
