"""Shared configuration parts and the one loader every role uses.

Each role owns one typed config (``actors.config.ActorConfig`` and so on) built from the
shared parts below. A config is loaded from a YAML or TOML file and then overridden on
the command line with ``--set section.field=value`` (values are parsed as YAML scalars,
so ``--set learner.lr=1e-5`` gives a float and ``--set bus.servers=[a,b]`` a list).
Validation is strict: an unknown or mistyped field is an error naming the file and field.

A YAML file may take a whole section from another file: ``model: !include models/math.yaml``
(the path is relative to the including file), so a run config can use a model recipe that
``tracerl model build`` reads too, without a second copy.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from protocol.codec import DEFAULT_MAX_BYTES
from tracerl.typed import SchemaError, from_plain, to_plain

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used. The message is one line naming the source and field."""


@dataclass(frozen=True)
class BusConfig:
    """How a role reaches NATS."""

    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
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
    max_message_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Identity and location of a training run, shared by every role."""

    run_id: str = "default"
    run_dir: str = "runs/default"
    seed: int = 0
    # A stopping role ends within this many seconds or exits with status 3, naming what hung.
    # Keep it above the longest planned stop step, such as a learner step on a large model.
    stop_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        if not self.stop_timeout_s > 0:
            raise ValueError("run.stop_timeout_s must be > 0")


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json_file: bool = True
    # Metrics also go to W&B (one run per role, grouped by run id; offline unless WANDB_MODE
    # says otherwise). TensorBoard event files under <run_dir>/tb/ are always written.
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"level must be debug, info, warning or error, not {self.level!r}")
        if self.wandb and not package_installed("wandb"):
            raise ValueError("wandb=true needs the wandb package, which is not installed (pip install wandb)")


WeightsTransport = Literal["object_store", "broadcast"]


@dataclass(frozen=True)
class WeightsConfig:
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
    host: str = "127.0.0.1"
    port: int = 0
    # A version is broadcast as flat byte buckets of this size.
    bucket_mib: int = 128
    # How long the learner waits for the actors of a new group to check in, and then for the
    # group to connect; an actor that does not check in is left out until it asks again.
    join_timeout_s: float = 30.0
    # The learner's bound on one version's broadcast; past it the group is dissolved.
    broadcast_timeout_s: float = 600.0
    # How long a member waits for the next version (a learner step) before it leaves the group.
    idle_timeout_s: float = 3600.0
    # How often an actor reads the group key while it is outside a group.
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("weights.port must be in [0, 65535]")
        if self.bucket_mib < 1:
            raise ValueError("weights.bucket_mib must be >= 1")
        for name in ("join_timeout_s", "broadcast_timeout_s", "idle_timeout_s", "poll_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"weights.{name} must be > 0")
        if not self.host:
            raise ValueError("weights.host must be set")

    @property
    def bucket_bytes(self) -> int:
        return self.bucket_mib * 1024 * 1024


def package_installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (a package may be slow to import)."""
    return importlib.util.find_spec(name) is not None


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, default) for every leaf field: the basis of ``--help`` text."""
    rows: list[tuple[str, str, str]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        rows.append((name, _type_label(tp), repr(to_plain(default))))
    return rows


def _type_label(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    args = ", ".join(_type_label(a) for a in get_args(tp))
    return f"{getattr(origin, '__name__', str(origin))}[{args}]"


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
    try:
        return from_plain(cls, data, allow_missing_defaults=True)
    except SchemaError as err:
        raise ConfigError(f"{source}: field {err.path}: {err.reason}") from None


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


def parse_override(item: str) -> tuple[str, Any]:
    """``section.field=value`` as (dotted key, value): the one reading of a ``--set`` override.

    The key ends at the first ``=``, so a value may contain ``=``. The value parses as YAML,
    plus exponent floats such as 1e-5 that YAML 1.1 would leave as strings.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    if not all(key.split(".")):
        raise ConfigError(f"--set {item!r}: key {key!r} has an empty part; expected section.field=value")
    try:
        return key, _yaml_load(raw) if raw else ""
    except yaml.YAMLError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {first_line}") from None


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
    """The resolved config as YAML, written into each run directory for reproducibility."""
    return yaml.safe_dump(to_plain(config), sort_keys=False)


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
