"""Shared configuration parts and the one loader every role uses.

Each role owns one typed config (``actors.config.ActorConfig`` and so on) built from the
shared parts below. A config is loaded from a YAML or TOML file and then overridden on
the command line with ``--set section.field=value`` (values are parsed as YAML scalars,
so ``--set learner.lr=1e-5`` gives a float and ``--set bus.servers=[a,b]`` a list).

Every config section is a frozen ``msgspec.Struct`` (``Config``): ``msgspec.convert`` builds
it from the loaded data, refusing unknown fields and mistyped values, and checks each
field's range as declared with ``msgspec.Meta``; ``__post_init__`` holds the rules that
tie fields together. As for protocol messages, ranges are checked where data enters (this
loader); a config built or ``replace``d in code runs its ``__post_init__`` only.
A rejection is a ``ConfigError`` naming the file or ``--set``, the field and its value.

A YAML file may take a whole section from another file: ``model: !include models/math.yaml``
(the path is relative to the including file), so a run config can use a model recipe that
``tracerl model build`` reads too, without a second copy.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml
from msgspec import Meta

from protocol.codec import DEFAULT_MAX_BYTES

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used. The message is one line naming the source and field."""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The options every config section is declared with (a type checker wants ``frozen=True``
    repeated on each)."""


# Declared ranges shared by many fields; a field with a range of its own spells it out.
Positive = Annotated[float, Meta(gt=0)]
AtLeast0 = Annotated[int, Meta(ge=0)]
AtLeast1 = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(gt=0, le=1)]


class BusConfig(Config, frozen=True):
    """How a role reaches NATS."""

    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    # Credentials file written by `tracerl bus` into the run directory; empty means
    # "<run_dir>/credentials/<role>.json".
    credentials: str = ""
    connect_timeout_s: float = 5.0
    # Bounded, because nats-py's defaults retry for minutes before reporting an outage.
    max_reconnect_attempts: int = 60
    reconnect_wait_s: float = 1.0
    request_timeout_s: float = 5.0
    # Larger messages on a consumed subject are rejected unread ("oversized"). The server's
    # own limit (the bus's max_payload, 8 MiB by default) is the ceiling; a role can be
    # stricter, so a client allowed on its subjects cannot make it decode huge payloads.
    max_message_bytes: AtLeast1 = DEFAULT_MAX_BYTES


class RunConfig(Config, frozen=True):
    """Identity and location of a training run, shared by every role."""

    run_id: str = "default"
    run_dir: str = "runs/default"
    seed: int = 0
    # A stopping role ends within this many seconds or exits with status 3, naming what hung.
    # Keep it above the longest planned stop step, such as a learner step on a large model.
    stop_timeout_s: Positive = 90.0


class LogConfig(Config, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_file: bool = True
    # Metrics also go to W&B (one run per role, grouped by run id; offline unless WANDB_MODE
    # says otherwise). TensorBoard event files under <run_dir>/tb/ are always written.
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.wandb and not package_installed("wandb"):
            raise ValueError("wandb=true needs the wandb package, which is not installed (pip install wandb)")


WeightsTransport = Literal["object_store", "broadcast"]


class WeightsConfig(Config, frozen=True):
    """How a policy version's bytes reach the actors; the learner and every actor set the same.

    ``object_store``: every actor reads every version from the bus's object store.
    ``broadcast``: the learner is rank 0 of a ``torch.distributed`` group the actors join
    (``weightsync``); the object store still holds every version, for the actors outside
    the group. Versions, checksums and the staleness bound are the same either way.
    """

    transport: WeightsTransport = "object_store"
    # gloo moves host memory (CPU, or any machine); nccl moves GPU memory over the GPUs' network.
    backend: Literal["gloo", "nccl"] = "gloo"
    # The address the actors reach the learner's rendezvous store at, and its port (0: any free one).
    host: Annotated[str, Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    # A version is broadcast as flat byte buckets of this size.
    bucket_mib: AtLeast1 = 128
    # How long the learner waits for the actors of a new group to check in, and then for the
    # group to connect; an actor that does not check in is left out until it asks again.
    join_timeout_s: Positive = 30.0
    # The learner's bound on one version's broadcast; past it the group is dissolved.
    broadcast_timeout_s: Positive = 600.0
    # How long a member waits for the next version (a learner step) before it leaves the group.
    idle_timeout_s: Positive = 3600.0
    # How often an actor reads the group key while it is outside a group.
    poll_interval_s: Positive = 1.0

    @property
    def bucket_bytes(self) -> int:
        return self.bucket_mib * 1024 * 1024


def package_installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a package may be slow to import)."""
    return importlib.util.find_spec(name) is not None


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type with its declared range, default) for every leaf field: the basis of ``--help`` text."""
    info = mi.type_info(cls)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{cls!r} is not a config struct")
    return _field_rows(info, prefix)


def _field_rows(struct: mi.StructType, prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for f in struct.fields:
        name = f"{prefix}{f.encode_name}"
        if isinstance(f.type, mi.StructType) and issubclass(f.type.cls, Config):
            rows.extend(_field_rows(f.type, name + "."))
            continue
        default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
        rows.append((name, _type_label(f.type), "<required>" if f.required else repr(msgspec.to_builtins(default))))
    return rows


def _type_label(tp: mi.Type) -> str:
    """``int >= 1``, ``float in (0, 1]``, ``list[str]``, ``'dense' | 'flex'``: a field's type as ``--help`` shows it."""
    if isinstance(tp, mi.LiteralType):
        return " | ".join(repr(v) for v in tp.values)
    if isinstance(tp, mi.UnionType):
        return " | ".join(_type_label(t) for t in tp.types)
    if isinstance(tp, mi.StructType):
        return tp.cls.__name__
    if isinstance(tp, (mi.ListType, mi.VarTupleType)):
        label = f"{'list' if isinstance(tp, mi.ListType) else 'tuple'}[{_type_label(tp.item_type)}]"
    elif isinstance(tp, mi.TupleType):
        label = f"tuple[{', '.join(_type_label(t) for t in tp.item_types)}]"
    elif isinstance(tp, mi.DictType):
        label = f"dict[{_type_label(tp.key_type)}, {_type_label(tp.value_type)}]"
    else:
        label = type(tp).__name__.removesuffix("Type").lower()
    return label + _range_label(tp)


def _range_label(tp: mi.Type) -> str:
    """`` in (0, 1]``, `` >= 1``, `` matching ^...$``: the constraints ``msgspec.Meta`` declares."""
    bound = {name: getattr(tp, name, None) for name in ("gt", "ge", "lt", "le")}
    low, low_open = (bound["gt"], True) if bound["gt"] is not None else (bound["ge"], False)
    high, high_open = (bound["lt"], True) if bound["lt"] is not None else (bound["le"], False)
    parts = []
    if low is not None and high is not None:
        parts.append(f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
    elif low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    elif high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    for name, text in (("multiple_of", "multiple of"), ("min_length", "length >="), ("pattern", "matching")):
        if getattr(tp, name, None):
            parts.append(f"{text} {getattr(tp, name)}")
    return "".join(f" {part}" if i == 0 else f", {part}" for i, part in enumerate(parts))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from defaults, then the file at ``path``, then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = read_config_file(path)
    for item in overrides or []:
        key, value = parse_override(item)
        _assign(data, key.split("."), value)
        source = f"{source} + --set"
    data = _strings_where_declared(mi.type_info(cls), data)
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err, data)}") from None


def _describe(err: msgspec.ValidationError, data: Any) -> str:
    """msgspec's ``Expected `int` >= 0 - at `$.training.max_steps``` as
    ``field training.max_steps = -1: Expected `int` >= 0`` (the value shown when it is a scalar)."""
    reason, at, where = str(err).rpartition(" - at `$")
    if not at:
        return reason or str(err)
    path = where.rstrip("`").lstrip(".")
    value = _value_at(data, path)
    shown = "" if value is _ABSENT or isinstance(value, (dict, list)) else f" = {value!r}"
    return f"field {path}{shown}: {reason}"


_ABSENT = object()


def _value_at(data: Any, path: str) -> Any:
    """The value at msgspec's error path (``a.b[2].c``) in the loaded data, if it is there."""
    node = data
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        if key and isinstance(node, dict) and key in node:
            node = node[key]
        elif index and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        else:
            return _ABSENT
    return node


def _strings_where_declared(tp: mi.Type, value: Any) -> Any:
    """A number given where a string is declared, as that string: YAML reads ``--set cpus.actors=0``
    or ``run_id: 7`` as numbers, but the field names a string."""
    if isinstance(tp, mi.StrType):
        return str(value) if type(value) in (int, float) else value
    if isinstance(tp, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in tp.fields}
        return {k: _strings_where_declared(fields[k], v) if k in fields else v for k, v in value.items()}
    if isinstance(tp, (mi.ListType, mi.VarTupleType)) and isinstance(value, list):
        return [_strings_where_declared(tp.item_type, v) for v in value]
    if isinstance(tp, mi.TupleType) and isinstance(value, list) and len(value) == len(tp.item_types):
        return [_strings_where_declared(t, v) for t, v in zip(tp.item_types, value, strict=True)]
    if isinstance(tp, mi.DictType) and isinstance(value, dict):
        return {k: _strings_where_declared(tp.value_type, v) for k, v in value.items()}
    return value


_FLOAT_LITERAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML that also reads 1e-5 as a float (YAML 1.1 wants a dot in the mantissa) and
    ``!include path`` as the content of another config file."""

    #: The files being read, outermost first; the last one anchors relative includes.
    including: tuple[Path, ...] = ()


def _include(loader: _ConfigLoader, node: yaml.Node) -> Any:
    relative = loader.construct_scalar(node)
    if not loader.including:
        raise ConfigError(f"!include {relative}: only a config file can include another")
    path = (loader.including[-1].parent / str(relative)).resolve()
    if path in loader.including:
        raise ConfigError(f"{loader.including[-1]}: !include {relative} includes a file that includes it")
    return read_config_file(path, loader.including)


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_LITERAL, list("+-0123456789."))
_ConfigLoader.add_constructor("!include", _include)


def _yaml_load(text: str, including: tuple[Path, ...] = ()) -> Any:
    loader = _ConfigLoader(text)
    loader.including = including
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(item: str, flag: str = "--set") -> tuple[str, Any]:
    """``section.field=value`` as (dotted key, value): the one reading of a ``--set`` override,
    and of the other ``key=value`` flags (`tracerl eval --option`), whose name ``flag`` errors quote.

    The key ends at the first ``=``, so a value may contain ``=``. The value parses as YAML,
    plus exponent floats such as 1e-5 that YAML 1.1 would leave as strings.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected key=value")
    if not all(key.split(".")):
        raise ConfigError(f"{flag} {item!r}: key {key!r} has an empty part; expected section.field=value")
    try:
        return key, _yaml_load(raw) if raw else ""
    except yaml.YAMLError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ConfigError(f"{flag} {key}: cannot parse value {raw!r}: {first_line}") from None


def override_args(settings: Mapping[str, Any]) -> list[str]:
    """``{"a.b": v}`` as ``--set`` arguments that ``parse_override`` reads back as the same values.

    JSON is a subset of YAML's flow style, and quoting keeps a string a string ("0", "true").
    """
    return [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in settings.items()]


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``: flat overrides as one config tree."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        _assign(nested, key.split("."), value)
    return nested


def flatten_dotted(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a config tree as flat overrides (inverse of ``nest_dotted``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump_config(config: Any) -> str:
    """The resolved config as YAML, written into each run directory for reproducibility; ``load_config``
    reads it back as the same config. (``msgspec.to_builtins`` is the deep form of ``msgspec.structs.asdict``.)"""
    return yaml.safe_dump(msgspec.to_builtins(config), sort_keys=False)


def write_resolved_config(config: Any, role: str) -> Path:
    """Record the config a role actually ran with, next to its logs and metrics."""
    run_dir = Path(config.run.run_dir)
    path = run_dir / "config" / f"{role}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return path


def read_config_file(path: Path, including: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's content as plain data, its ``!include``s resolved (``including``: the
    files that include this one)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = _yaml_load(text, (*including, path.resolve())) or {}
        else:
            raise ConfigError(f"{path}: config must be .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        first_line = str(err).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {first_line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _assign(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value
