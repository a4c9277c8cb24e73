"""The one config loader: files, overrides, strict validation, one-line errors."""

from dataclasses import dataclass, field

import pytest

from allocator.config import AllocatorConfig
from learner.config import LearnerConfig
from tracerl.config import ConfigError, field_docs, load_config, parse_override_value


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass(frozen=True)
class Outer:
    count: int = 3
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("count: 7\ninner:\n  rate: 1e-3\n")
    config = load_config(Outer, path, ["inner.names=[x, y]", "count=9"])
    assert config == Outer(count=9, inner=Inner(rate=1e-3, names=["x", "y"]))


def test_toml_files_load(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("count = 4\n[inner]\nrate = 0.25\n")
    assert load_config(Outer, path) == Outer(count=4, inner=Inner(rate=0.25))


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("count: two\n", [], "field count: expected an integer"),
        ("cuont: 2\n", [], "unknown field(s) ['cuont']"),
        ("inner: 3\n", [], "field inner: expected a mapping"),
        ("", ["count=true"], "expected an integer, got True"),
        ("", ["novalue"], "expected key=value"),
    ],
)
def test_errors_name_the_source_and_the_field(tmp_path, text, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    if not overrides:
        assert str(path) in message


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("count: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
    wrong_suffix = tmp_path / "c.json"
    wrong_suffix.write_text("{}")
    with pytest.raises(ConfigError, match="must be .yaml"):
        load_config(Outer, wrong_suffix)


def test_exponent_floats_parse_as_numbers():
    assert parse_override_value("3e-4") == pytest.approx(3e-4)
    assert parse_override_value("-1E2") == -100.0
    assert parse_override_value("abc") == "abc"
    config = load_config(LearnerConfig, None, ["optimiser.lr=3e-4"])
    assert config.optimiser.lr == pytest.approx(3e-4)


def test_range_checks_surface_as_config_errors():
    with pytest.raises(ConfigError, match="strategy must be one of"):
        load_config(AllocatorConfig, None, ["core.strategy=bogus"])
    with pytest.raises(ConfigError, match="max_steps must be >= 0"):
        load_config(LearnerConfig, None, ["training.max_steps=-1"])


def test_field_docs_cover_every_leaf():
    rows = {name: (tp, default) for name, tp, default in field_docs(Outer)}
    assert rows == {"count": ("int", "3"), "inner.rate": ("float", "0.5"), "inner.names": ("list[str]", "['a']")}


def test_every_shipped_config_file_loads_into_its_role():
    from pathlib import Path

    from modelkit.config import ModelBuildConfig
    from tracerl.config import load_config
    from tracerl.upconfig import UpConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    up = load_config(UpConfig, str(root / "default.yaml"), [])
    assert up.allocator.core.strategy == "trace" and up.learner.training.max_steps == 100
    models = sorted((root / "models").glob("*.yaml"))
    assert [p.stem for p in models] == ["frozenlake", "math", "sokoban"]
    for path in models:
        build = load_config(ModelBuildConfig, str(path), [])
        assert build.demos.environments == [path.stem]
        # Grid cells are not copied from the context, so the grid recipes have no plateau to wait for.
        assert (build.training.plateau_exit_loss == 0) == (path.stem in ("frozenlake", "sokoban"))
    runs = sorted(p.stem for p in root.glob("*.yaml"))
    assert runs == ["default", "math"]
    math = load_config(UpConfig, str(root / "math.yaml"), ["model.threads=1"])
    assert math.allocator.tasks.env == "math" and math.model_dir == ""
    # The run builds exactly the model `tracerl model build --config configs/models/math.yaml` builds.
    assert math.model.recipe() == load_config(ModelBuildConfig, str(root / "models" / "math.yaml")).recipe()
    assert math.allocator.core.max_turns >= 6  # the default generator's largest turn cap


def test_a_yaml_file_can_include_a_section_from_another(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "inner.yaml").write_text("rate: 0.25\nnames: [p, q]\n")
    path = tmp_path / "outer.yaml"
    path.write_text("count: 5\ninner: !include parts/inner.yaml\n")
    assert load_config(Outer, path) == Outer(count=5, inner=Inner(rate=0.25, names=["p", "q"]))
    # --set overrides apply on top of the included section.
    assert load_config(Outer, path, ["inner.rate=0.5"]).inner == Inner(rate=0.5, names=["p", "q"])


@pytest.mark.parametrize(
    "files, message",
    [
        ({"c.yaml": "inner: !include missing.yaml\n"}, "missing.yaml: config file not found"),
        ({"c.yaml": "inner: !include d.yaml\n", "d.yaml": "rate: [\n"}, "d.yaml: not valid YAML"),
        ({"c.yaml": "inner: !include d.yaml\n", "d.yaml": "rate: 0.1\nextra: !include c.yaml\n"},
         "includes a file that includes it"),
        ({"c.yaml": "inner: !include d.yaml\n", "d.yaml": "rate: fast\n"}, "field inner.rate"),
    ],
)
def test_include_errors_name_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, tmp_path / "c.yaml")


def test_an_override_value_cannot_include_a_file():
    with pytest.raises(ConfigError, match="only a config file can include another"):
        load_config(Outer, None, ["inner=!include /etc/passwd"])
