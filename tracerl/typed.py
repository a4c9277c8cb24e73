"""Strict conversion between plain data (dicts, lists, scalars) and typed config dataclasses.

An object is built only when no unknown field is present and every value has the declared
type; a field with a default may be omitted. Errors name the offending dotted field.
Protocol messages (``msgspec`` structs) met inside a config are judged by their own schema.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec


class SchemaError(ValueError):
    """Raised when plain data does not match the declared dataclass schema.

    ``path`` names the offending field (``a.b[3].c``) so that the message points at the
    exact place in a config file or a message.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path or "<root>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_SCALAR_TYPES = (int, float, str, bytes, bool, type(None))


def to_plain(obj: Any) -> Any:
    """Config tree -> plain data (YAML/JSON-able)."""
    if type(obj) in _SCALAR_TYPES:
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, msgspec.Struct):
        return msgspec.to_builtins(obj, builtin_types=(bytes,))
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def from_plain(cls: type, data: Any, path: str = "", *, allow_missing_defaults: bool = False) -> Any:
    """Plain data -> instance of dataclass ``cls``, or ``SchemaError``.

    With ``allow_missing_defaults`` (configs), fields that have defaults may be omitted;
    without it (files a program wrote) every field must be stated.
    """
    return _convert(cls, data, path, allow_missing_defaults)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


Converter = typing.Callable[[Any, str, bool], Any]
_converters: dict[Any, Converter] = {}


def _convert(tp: Any, value: Any, path: str, lenient: bool) -> Any:
    return _converter(tp)(value, path, lenient)


def _converter(tp: Any) -> Converter:
    """The conversion function for type ``tp``, built once: decoding then never re-reads hints."""
    try:
        return _converters[tp]
    except KeyError:
        conv = _build_converter(tp)
        _converters[tp] = conv
        return conv
    except TypeError:  # an unhashable type expression; build without caching
        return _build_converter(tp)


def _build_converter(tp: Any) -> Converter:
    if get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]

    if tp is Any:
        return lambda value, path, lenient: _check_plain_data(value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _struct_converter(tp)

    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union_converter(tp)
    if origin is Literal:
        allowed = get_args(tp)

        def convert_literal(value: Any, path: str, lenient: bool) -> Any:
            if not any(value == a and type(value) is type(a) for a in allowed):
                raise SchemaError(path, f"expected one of {list(allowed)}, got {value!r}")
            return value

        return convert_literal
    if origin in (list, tuple):
        return _sequence_converter(tp, origin)
    if origin is dict:
        return _dict_converter(tp)
    return _scalar_converter(tp)


def _struct_converter(cls: type) -> Converter:
    """A protocol message inside a config (the allocator's sampling) is judged by its own schema."""

    def convert_struct(value: Any, path: str, lenient: bool) -> Any:
        try:
            return msgspec.convert(value, cls)
        except msgspec.ValidationError as err:
            what, at, sub = str(err).rpartition(" - at `$")
            raise SchemaError(path + sub.rstrip("`") if at else path, what if at else str(err)) from None

    return convert_struct


def _union_converter(tp: Any) -> Converter:
    options = get_args(tp)
    nullable = type(None) in options
    option_converters = [_converter(option) for option in options if option is not type(None)]

    def convert_union(value: Any, path: str, lenient: bool) -> Any:
        if value is None and nullable:
            return None
        errors = []
        for convert in option_converters:
            try:
                return convert(value, path, lenient)
            except SchemaError as err:
                errors.append(err.reason)
        raise SchemaError(path, "; ".join(errors) or f"expected {_type_name(tp)}")

    return convert_union


def _sequence_converter(tp: Any, origin: Any) -> Converter:
    args = get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        item_converters = [_converter(a) for a in args]

        def convert_fixed_tuple(value: Any, path: str, lenient: bool) -> Any:
            if not isinstance(value, (list, tuple)):
                raise SchemaError(path, f"expected a list, got {type(value).__name__}")
            if len(value) != len(args):
                raise SchemaError(path, f"expected {len(args)} items, got {len(value)}")
            return tuple(
                c(v, f"{path}[{i}]", lenient) for i, (c, v) in enumerate(zip(item_converters, value, strict=True))
            )

        return convert_fixed_tuple
    item = _converter(args[0] if args else Any)
    as_tuple = origin is tuple

    def convert_sequence(value: Any, path: str, lenient: bool) -> Any:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {type(value).__name__}")
        items = [item(v, f"{path}[{i}]", lenient) for i, v in enumerate(value)]
        return tuple(items) if as_tuple else items

    return convert_sequence


def _dict_converter(tp: Any) -> Converter:
    key_tp, val_tp = get_args(tp) or (Any, Any)
    convert_key, convert_value = _converter(key_tp), _converter(val_tp)

    def convert_dict(value: Any, path: str, lenient: bool) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a mapping, got {type(value).__name__}")
        out = {}
        for k, v in value.items():
            out[convert_key(k, f"{path}.<key>", lenient)] = convert_value(v, f"{path}.{k}", lenient)
        return out

    return convert_dict


_EXACT_SCALARS = (int, bool, float, str, bytes)


def _scalar_converter(tp: Any) -> Converter:
    if tp not in _EXACT_SCALARS:
        return lambda value, path, lenient: _convert_scalar(tp, value, path)

    def convert_scalar(value: Any, path: str, lenient: bool) -> Any:
        # The common valid case inline; _convert_scalar owns conversions and error messages.
        if type(value) is tp:
            return value
        # Configs (lenient): `--set cpus.actors=0` parses as YAML 0 but names a string field.
        if lenient and tp is str and type(value) in (int, float):
            return str(value)
        return _convert_scalar(tp, value, path)

    return convert_scalar


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
    # bool is a subclass of int in Python; a config saying `budget: true` is a mistake.
    if tp is bool:
        if type(value) is not bool:
            raise SchemaError(path, f"expected a boolean, got {value!r}")
        return value
    if tp is int:
        if type(value) is not int:
            raise SchemaError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if type(value) not in (int, float):
            raise SchemaError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {type(value).__name__}")
        return value
    if tp is bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise SchemaError(path, f"expected bytes, got {type(value).__name__}")
        return bytes(value)
    if tp is type(None):
        if value is not None:
            raise SchemaError(path, f"expected null, got {value!r}")
        return None
    raise SchemaError(path, f"unsupported schema type {_type_name(tp)}")


def _dataclass_converter(cls: type) -> Converter:
    # Field converters are resolved on first use, so a dataclass may refer to itself.
    plan: list[tuple[str, Converter, bool]] = []
    names: set[str] = set()

    def convert_dataclass(value: Any, path: str, lenient: bool) -> Any:
        if not plan:
            hints = get_type_hints(cls, include_extras=True)
            for f in dataclasses.fields(cls):
                if f.init:
                    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                    plan.append((f.name, _converter(hints[f.name]), has_default))
                    names.add(f.name)
        return _convert_dataclass(cls, plan, names, value, path, lenient)

    return convert_dataclass


def _convert_dataclass(
    cls: type,
    plan: list[tuple[str, Converter, bool]],
    names: set[str],
    value: Any,
    path: str,
    lenient: bool,
) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a mapping for {cls.__name__}, got {type(value).__name__}")
    unknown = [k for k in value if k not in names]
    if unknown:
        raise SchemaError(path, f"unknown field(s) {sorted(map(str, unknown))} for {cls.__name__}")
    kwargs = {}
    for name, convert, has_default in plan:
        sub = f"{path}.{name}" if path else name
        if name not in value:
            if lenient and has_default:
                continue
            raise SchemaError(sub, f"missing required field of {cls.__name__}")
        kwargs[name] = convert(value[name], sub, lenient)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ range checks
        raise SchemaError(path, str(err)) from err


def _check_plain_data(value: Any, path: str, depth: int = 0) -> Any:
    """Free-form fields may only hold plain scalars, lists and str-keyed maps."""
    if depth > 16:
        raise SchemaError(path, "nesting too deep")
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise SchemaError(path, "non-finite number")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain_data(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(path, f"non-string key {k!r}")
            out[k] = _check_plain_data(v, f"{path}.{k}", depth + 1)
        return out
    raise SchemaError(path, f"unsupported value of type {type(value).__name__}")
