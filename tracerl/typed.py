"""Strict conversion between plain data (dicts, lists, scalars) and typed dataclasses.

Both the wire protocol and the role configs need the same guarantee: an object is built
only when every field is present, no unknown field is present, and every value has the
declared type. Keeping that rule in one function means a config file and a NATS message
are judged by identical logic and give the same kind of error message.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import struct
import types
import typing
from array import array
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class SchemaError(ValueError):
    """Raised when plain data does not match the declared dataclass schema.

    ``path`` names the offending field (``a.b[3].c``) so that the message points at the
    exact place in a config file or a message.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path or "<root>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class Packed:
    """Marks a ``list[int]`` or ``list[float]`` field that travels as one packed binary array.

    Token ids and logprobs are the bulk of every message; packing them keeps a 300-token
    node at a few kilobytes and makes decoding a single memcpy instead of a Python loop.
    """

    typecode: str  # array-module typecode: "i" (int32), "f" (float32) or "d" (float64)


Int32List = typing.Annotated[list[int], Packed("i")]
# float32 rounds each value to the nearest float32 (beyond its range: to +-inf); use it only
# where the source is float32 anyway, so nothing is lost (vLLM's logprobs are).
Float32List = typing.Annotated[list[float], Packed("f")]

_hint_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hint_cache.get(cls)
    if hints is None:
        hints = get_type_hints(cls, include_extras=True)
        _hint_cache[cls] = hints
    return hints


_SCALAR_TYPES = (int, float, str, bytes, bool, type(None))


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> msgpack-able plain data, packing annotated arrays to bytes."""
    tp = type(obj)
    if tp in _SCALAR_TYPES:
        return obj
    encode = _encoders.get(tp)
    if encode is not None:
        return encode(obj)
    # Exact containers first: is_dataclass() on a value that is not one costs a failed
    # attribute lookup, and messages are full of small dicts and lists.
    if tp is dict:
        return {k: to_plain(v) for k, v in obj.items()}
    if tp is list or tp is tuple:
        return [to_plain(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _dataclass_encoder(tp)(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


_structs: dict[tuple[str, int], struct.Struct] = {}


def _pack_array(typecode: str, value: Any) -> bytes:
    """Same bytes as ``array(typecode, value).tobytes()``; struct packs a list about 3x faster."""
    if isinstance(value, (list, tuple)):
        # A compiled Struct per (type, length): struct.pack() re-reads the format every call.
        key = (typecode, len(value))
        packer = _structs.get(key)
        if packer is None:
            if len(_structs) >= 4096:  # lengths vary per message; keep the cache bounded
                _structs.clear()
            packer = _structs[key] = struct.Struct(f"{len(value)}{typecode}")
        try:
            return packer.pack(*value)
        except struct.error:
            pass  # let array raise the same TypeError/OverflowError as before
    return array(typecode, value).tobytes()


Encoder = typing.Callable[[Any], Any]
# Keyed by the exact type: encoding a message then costs one dict lookup per dataclass,
# not a dataclasses.is_dataclass() probe per value.
_encoders: dict[type, Encoder] = {}


def _dataclass_encoder(cls: type) -> Encoder:
    """The encoder of dataclass ``cls``, built once from its field types.

    Only packed arrays and fields that may hold containers or dataclasses are visited; a
    field declared as a scalar is taken as it is (a wrong value there fails in msgpack or
    in the receiver's strict decode).
    """
    hints = _hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    packed = tuple((name, marker.typecode) for name in names if (marker := _packed_marker(hints[name])) is not None)
    nested = tuple(name for name in names if _packed_marker(hints[name]) is None and not _is_scalar_type(hints[name]))
    get_all = operator.attrgetter(*names) if len(names) > 1 else (lambda obj: (getattr(obj, names[0]),))
    # A frozen dataclass's __dict__ holds its fields (set once, by __init__), and copying it
    # is ten times cheaper than reading them one by one. Anything else there (fields kept
    # in a base class's __slots__, say) changes the count and falls back to the getter.
    has_dict = any("__slots__" not in c.__dict__ for c in cls.__mro__[:-1])
    copy_dict = cls.__dataclass_params__.frozen and has_dict  # type: ignore[attr-defined]

    def encode(obj: Any) -> dict[str, Any]:
        out = obj.__dict__.copy() if copy_dict else None
        if out is None or len(out) != len(names):
            out = dict(zip(names, get_all(obj), strict=True))
        for name, typecode in packed:
            value = out[name]
            if value is not None:
                out[name] = _pack_array(typecode, value)
        for name in nested:
            value = out[name]
            if type(value) not in _SCALAR_TYPES:
                out[name] = to_plain(value)
        return out

    _encoders[cls] = encode
    return encode


def _is_scalar_type(tp: Any) -> bool:
    """True for str/int/float/bool/bytes/None, literals of them, and unions of those."""
    if tp in _SCALAR_TYPES:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return all(type(a) in _SCALAR_TYPES for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return all(_is_scalar_type(a) for a in get_args(tp))
    return False


def from_plain(cls: type, data: Any, path: str = "", *, allow_missing_defaults: bool = False) -> Any:
    """Plain data -> instance of dataclass ``cls``, or ``SchemaError``.

    With ``allow_missing_defaults`` (configs), fields that have defaults may be omitted.
    Messages are decoded without it: a sender must state every field.
    """
    return _convert(cls, data, path, allow_missing_defaults)


def _packed_marker(tp: Any) -> Packed | None:
    if get_origin(tp) is typing.Annotated:
        for meta in tp.__metadata__:
            if isinstance(meta, Packed):
                return meta
    return None


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
    packed = _packed_marker(tp)
    if packed is not None:
        return _array_converter(packed)
    if get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]

    if tp is Any:
        return lambda value, path, lenient: _check_plain_data(value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)

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
    plan: list[tuple[str, Converter, bool, tuple[type, ...]]] = []
    names: set[str] = set()

    def convert_dataclass(value: Any, path: str, lenient: bool) -> Any:
        if not plan:
            hints = _hints(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                    tp = hints[f.name]
                    plan.append((f.name, _converter(tp), has_default, _unchanged_types(tp)))
                    names.add(f.name)
        return _convert_dataclass(cls, plan, names, value, path, lenient)

    return convert_dataclass


def _unchanged_types(tp: Any) -> tuple[type, ...]:
    """Value types the converter of ``tp`` would return untouched; decoding skips the call for them."""
    if tp in _EXACT_SCALARS:
        return (tp,)
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        # Only ``X | None``: in a wider union an earlier option may convert (int -> float).
        if len(args) == 2 and type(None) in args:
            other = args[0] if args[1] is type(None) else args[1]
            if other in _EXACT_SCALARS:
                return (other, type(None))
    return ()


def _convert_dataclass(
    cls: type,
    plan: list[tuple[str, Converter, bool, tuple[type, ...]]],
    names: set[str],
    value: Any,
    path: str,
    lenient: bool,
) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a mapping for {cls.__name__}, got {type(value).__name__}")
    kwargs = {}
    if value.keys() == names:  # every message: exactly the declared fields
        for name, convert, _, unchanged in plan:
            field_value = value[name]
            if type(field_value) in unchanged:
                kwargs[name] = field_value
            else:
                kwargs[name] = convert(field_value, f"{path}.{name}" if path else name, lenient)
    else:
        unknown = [k for k in value if k not in names]
        if unknown:
            raise SchemaError(path, f"unknown field(s) {sorted(map(str, unknown))} for {cls.__name__}")
        for name, convert, has_default, _ in plan:
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


def _array_converter(packed: Packed) -> Converter:
    typecode = packed.typecode
    itemsize = array(typecode).itemsize

    def convert_array(value: Any, path: str, lenient: bool) -> list[Any]:
        arr = array(typecode)
        if isinstance(value, (bytes, bytearray)):  # the packed form: one memcpy
            if len(value) % itemsize:
                raise SchemaError(path, f"packed array of {len(value)} bytes is not a multiple of {itemsize}")
            arr.frombytes(value)
        elif isinstance(value, list):  # accepted for hand-written data, e.g. tests and configs
            try:
                arr.extend(value)
            except (TypeError, OverflowError) as err:
                raise SchemaError(path, f"bad array element: {err}") from err
            if typecode == "i" and any(type(v) is not int for v in value):
                raise SchemaError(path, "expected integers")
        else:
            raise SchemaError(path, f"expected a packed array, got {type(value).__name__}")
        return arr.tolist()

    return convert_array


def _check_plain_data(value: Any, path: str, depth: int = 0) -> Any:
    """Free-form fields (task specs) may only hold msgpack scalars, lists and str-keyed maps."""
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
