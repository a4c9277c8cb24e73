from __future__ import annotations

import json
from pathlib import Path

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


def test_adding_an_environment_renames_no_other_model():
    """The shipped recipes keep the cache keys they had before the math environment existed:
    its mistake fields and tags stay out of recipes whose demos do not include it."""
    from environments.demos import DEMO_FORMAT_REVISIONS
    from environments.tags import SEARCH_R1_TAGS
    from modelkit.build import recipe_key
    from modelkit.config import ModelBuildConfig
    from modelkit.tokenizer import environment_tags
    from tracerl.config import load_config

    configs = Path(__file__).resolve().parents[2] / "configs" / "models"

    def key(path: Path | None, overrides: list[str] | None = None) -> str:
        return recipe_key(load_config(ModelBuildConfig, path, overrides or []))

    assert key(None) == "b698301b3368a961"
    assert key(configs / "frozenlake.yaml") == "739ae61b8b1bcc96"
    assert key(configs / "sokoban.yaml") == "946a387210a1d2fb"
    assert key(None, TEST_BUILD_OVERRIDES) == "7e8c38bf95a3f411"
    for env_name in ("multihop", "frozenlake", "sokoban"):  # the tags, in the order, every model had before
        assert environment_tags([env_name]) == SEARCH_R1_TAGS == environment_tags()[:8]
    # The math fields shape the key only of recipes that demonstrate math.
    assert key(None, ["demos.mistakes.math_confusion_rate=0.5"]) == key(None)
    assert key(configs / "math.yaml", ["demos.mistakes.math_confusion_rate=0.5"]) != key(configs / "math.yaml")
    assert "</calculate>" in environment_tags(["math"]) and "<search>" not in environment_tags(["math"])
    for env_name, field in (("toolcall", "toolcall_confusion_rate"), ("webshop", "webshop_hasty_share")):
        assert key(None, [f"demos.mistakes.{field}=0.5"]) == key(None)
        recipe = configs / f"{env_name}.yaml"
        assert key(recipe, [f"demos.mistakes.{field}=0.5"]) != key(recipe)
    # A demonstration format revision renames the models of its environment only.
    revised = load_config(ModelBuildConfig, configs / "toolcall.yaml", []).recipe()
    assert revised["demo_format_revisions"] == {"toolcall": DEMO_FORMAT_REVISIONS["toolcall"]}
    assert "demo_format_revisions" not in load_config(ModelBuildConfig, configs / "math.yaml", []).recipe()
    webshop = load_config(ModelBuildConfig, configs / "webshop.yaml", []).recipe()
    assert webshop["demo_format_revisions"] == {"webshop": DEMO_FORMAT_REVISIONS["webshop"]}
    assert key(configs / "webshop.yaml") == "4f9040bcb2e9665e"


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
