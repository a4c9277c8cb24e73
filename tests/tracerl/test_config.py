"""The one config loader: files, overrides, strict validation, one-line errors."""

from typing import Annotated, Literal

import msgspec
import pytest

from allocator.config import AllocatorConfig
from learner.config import LearnerConfig
from tracerl.config import (
    Config,
    ConfigError,
    dump_config,
    field_docs,
    flatten_dotted,
    load_config,
    nest_dotted,
    override_args,
    parse_override,
)
from tracerl.upconfig import UpConfig


class Inner(Config, frozen=True):
    rate: float = 0.5
    names: list[str] = msgspec.field(default_factory=lambda: ["a"])


class Outer(Config, frozen=True):
    count: int = 3
    inner: Inner = Inner()


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
        ("count: two\n", [], "field count = 'two': Expected `int`, got `str`"),
        ("cuont: 2\n", [], "Object contains unknown field `cuont`"),
        ("inner:\n  rate: 1\n  nmes: []\n", [], "field inner: Object contains unknown field `nmes`"),
        ("inner: 3\n", [], "field inner = 3: Expected `object`, got `int`"),
        ("inner:\n  names: [a, [b]]\n", [], "field inner.names[1]: Expected `str`, got `array`"),
        ("", ["count=true"], "field count = True: Expected `int`, got `bool`"),
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
    with pytest.raises(ConfigError, match=r"must be \.yaml"):
        load_config(Outer, wrong_suffix)


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("count=9", "count", 9),
        ("inner.rate=0.25", "inner.rate", 0.25),
        ("learner.optimiser.lr=1e-5", "learner.optimiser.lr", 1e-5),
        ("a.b=-1E2", "a.b", -100.0),
        ("a.b=true", "a.b", True),
        ("a.b=false", "a.b", False),
        ("bus.servers=[a,b]", "bus.servers", ["a", "b"]),
        ("a.b=[1, 2.5]", "a.b", [1, 2.5]),
        ("run.run_id=exp1", "run.run_id", "exp1"),
        ('run.run_id="0"', "run.run_id", "0"),
        ("run.run_id=a=b=c", "run.run_id", "a=b=c"),
        ("run.run_id=", "run.run_id", ""),
    ],
)
def test_an_override_is_a_dotted_key_and_a_yaml_value(item, key, value):
    parsed_key, parsed = parse_override(item)
    assert parsed_key == key
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("novalue", "--set 'novalue': expected key=value"),
        ("=3", "--set '=3': expected key=value"),
        ("a..b=1", "--set 'a..b=1': key 'a..b' has an empty part"),
        ("a.b.=1", "--set 'a.b.=1': key 'a.b.' has an empty part"),
        ("a.b=[1, 2", "--set a.b: cannot parse value '[1, 2'"),
    ],
)
def test_a_malformed_override_is_a_one_line_error_quoting_it(item, expected):
    with pytest.raises(ConfigError) as err:
        parse_override(item)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_override_args_read_back_as_the_same_values():
    settings = {"a.b": "x", "c": 2, "d": 1.5, "e": 1e-5, "f": True, "g": None, "h": ["p", 1], "i": "0", "j": "k=v"}
    args = override_args(settings)
    assert args[:4] == ['a.b="x"', "c=2", "d=1.5", "e=1e-05"]
    assert dict(parse_override(arg) for arg in args) == settings


def test_nest_and_flatten_turn_flat_overrides_into_a_config_tree_and_back():
    flat = {"a.b": 1, "a.c": "0", "a.d.e": [1], "f": 2}
    tree = {"a": {"b": 1, "c": "0", "d": {"e": [1]}}, "f": 2}
    assert nest_dotted(flat) == tree and flatten_dotted(tree) == flat
    with pytest.raises(ConfigError, match="a is not a section"):
        nest_dotted({"a": 1, "a.b": 2})


def test_exponent_floats_parse_as_numbers():
    config = load_config(LearnerConfig, None, ["optimiser.lr=3e-4"])
    assert config.optimiser.lr == pytest.approx(3e-4)


def test_an_exponent_float_in_a_yaml_file_reaches_the_config_as_a_float(tmp_path):
    # Plain YAML 1.1 (yaml.safe_load) reads 1e-5 as the string "1e-5": no dot in the mantissa.
    path = tmp_path / "lr.yaml"
    path.write_text("optimiser:\n  lr: 1e-5\n")
    config = load_config(LearnerConfig, path)
    assert type(config.optimiser.lr) is float and config.optimiser.lr == 1e-5


def test_a_string_where_a_float_is_declared_is_refused_naming_the_field(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text("optimiser:\n  lr: '3e-4'\n")
    with pytest.raises(ConfigError, match=r"quoted\.yaml: field optimiser\.lr = '3e-4': Expected `float`, got `str`$"):
        load_config(LearnerConfig, path)


def test_range_checks_surface_as_config_errors():
    with pytest.raises(ConfigError, match=r"^defaults \+ --set: field core: allocator\.strategy must be one of"):
        load_config(AllocatorConfig, None, ["core.strategy=bogus"])
    with pytest.raises(ConfigError, match=r"^defaults \+ --set: field training\.max_steps = -1: Expected `int` >= 0$"):
        load_config(LearnerConfig, None, ["training.max_steps=-1"])
    with pytest.raises(ConfigError, match=r"field optimiser\.betas\[1\] = 1\.0: Expected `float` < 1\.0$"):
        load_config(LearnerConfig, None, ["optimiser.betas=[0.9, 1.0]"])
    with pytest.raises(ConfigError, match=r"field optimiser\.lr = nan: Expected `float` > 0\.0$"):
        load_config(LearnerConfig, None, ["optimiser.lr=.nan"])


def test_field_docs_cover_every_leaf():
    rows = {name: (tp, default) for name, tp, default in field_docs(Outer)}
    assert rows == {"count": ("int", "3"), "inner.rate": ("float", "0.5"), "inner.names": ("list[str]", "['a']")}


class Ranged(Config, frozen=True):
    share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    size: Annotated[int, msgspec.Meta(ge=16, multiple_of=16)] = 16
    names: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["a"])
    kind: Literal["x", "y"] = "x"
    limit: int | None = None


def test_field_docs_show_each_declared_range():
    assert field_docs(Ranged) == [
        ("share", "float in (0, 1]", "0.5"),
        ("size", "int >= 16, multiple of 16", "16"),
        ("names", "list[str] length >= 1", "['a']"),
        ("kind", "'x' | 'y'", "'x'"),
        ("limit", "int | none", "None"),
    ]


def test_a_number_where_a_string_is_declared_is_that_string(tmp_path):
    # YAML reads these as numbers; the fields name strings (a core list, a run id).
    up = load_config(UpConfig, None, ["cpus.actors=0", "run.run_id=7", "bus.extra_run_ids=[1, b]"])
    assert (up.cpus.actors, up.run.run_id, up.bus.extra_run_ids) == ("0", "7", ["1", "b"])
    # ...but not the other way round: a string never becomes a number.
    with pytest.raises(ConfigError, match=r"field num_actors = '2': Expected `int`, got `str`"):
        load_config(UpConfig, None, ['num_actors="2"'])


@pytest.mark.parametrize("role", ["UpConfig", "LearnerConfig", "AllocatorConfig"])
def test_a_dumped_config_loads_back_as_the_same_config(tmp_path, role):
    from actors.config import ActorConfig
    from bus.config import BusServerConfig

    classes = {"UpConfig": UpConfig, "LearnerConfig": LearnerConfig, "AllocatorConfig": AllocatorConfig}
    cls = classes[role]
    config = load_config(cls, None, [])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(cls, path) == config
    assert "optimiser:\n    lr: 1.0e-05\n" in dump_config(load_config(UpConfig))  # readable, nested YAML
    for part in (ActorConfig(), BusServerConfig()):
        path.write_text(dump_config(part))
        assert load_config(type(part), path) == part


def test_every_shipped_config_file_loads_into_its_role():
    from pathlib import Path

    from modelkit.config import ModelBuildConfig
    from tracerl.config import load_config
    from tracerl.upconfig import UpConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    up = load_config(UpConfig, str(root / "default.yaml"), [])
    assert up.allocator.core.strategy == "trace" and up.learner.training.max_steps == 100
    models = sorted((root / "models").glob("*.yaml"))
    assert [p.stem for p in models] == ["frozenlake", "math", "sokoban", "toolcall", "webshop"]
    for path in models:
        build = load_config(ModelBuildConfig, str(path), [])
        assert build.demos.environments == [path.stem]
        # Grid cells are not copied from the context, so the grid recipes have no plateau to wait for.
        assert (build.training.plateau_exit_loss == 0) == (path.stem in ("frozenlake", "sokoban"))
    runs = sorted(p.stem for p in root.glob("*.yaml"))
    assert runs == ["default", "math", "toolcall", "webshop"]
    # The default generator's largest turn cap of each environment a run config trains on.
    largest_cap = {"math": 6, "toolcall": 8, "webshop": 7}
    for name, cap in largest_cap.items():
        run = load_config(UpConfig, str(root / f"{name}.yaml"), ["model.threads=1"])
        assert run.allocator.tasks.env == name and run.model_dir == ""
        # The run builds exactly the model `tracerl model build --config configs/models/<env>.yaml` builds.
        assert run.model.recipe() == load_config(ModelBuildConfig, str(root / "models" / f"{name}.yaml")).recipe()
        assert run.allocator.core.max_turns >= cap
    for name in ("toolcall", "webshop"):  # their held-out probes run whole episodes
        run = load_config(UpConfig, str(root / f"{name}.yaml"), ["model.threads=1"])
        assert run.allocator.heldout.max_turns >= largest_cap[name]


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
        (
            {"c.yaml": "inner: !include d.yaml\n", "d.yaml": "rate: 0.1\nextra: !include c.yaml\n"},
            "includes a file that includes it",
        ),
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
