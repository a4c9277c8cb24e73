"""A small JSON Schema validator: the subset that tool definitions and task files use.

Keywords: ``type`` (object, array, string, integer, number, boolean), ``properties``,
``required``, ``additionalProperties`` (``false`` or a schema for every other key), ``items``,
``enum``, ``minimum``, ``maximum`` and ``description`` (ignored). ``check_schema`` refuses any
other keyword, so a schema never claims a constraint that nothing checks.

``integer`` means a JSON integer (``2``, not ``2.0``) and no type accepts a boolean except
``boolean``, as JSON itself keeps them apart. ``validate`` returns every violation as a short
sentence naming where it is (``arguments.quantity: must be >= 1, got 0``) so that a policy can
read what is wrong with its call; an empty list means valid.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "minimum", "maximum", "description"}
)
#: A value's violations are listed up to this many; the rest are summarised.
MAX_VIOLATIONS = 8


class SchemaDefinitionError(ValueError):
    """A schema that uses something this validator does not check, or is malformed."""


def check_schema(schema: Any, where: str = "schema") -> None:
    """Raise ``SchemaDefinitionError`` unless ``schema`` uses only the supported keywords, well formed."""
    if not isinstance(schema, dict):
        raise SchemaDefinitionError(f"{where} must be an object, got {type(schema).__name__}")
    unknown = sorted(set(schema) - KEYWORDS)
    if unknown:
        raise SchemaDefinitionError(f"{where} uses unsupported keywords {unknown}; supported: {sorted(KEYWORDS)}")
    kind = schema.get("type")
    if kind is not None and kind not in TYPES:
        raise SchemaDefinitionError(f"{where}.type must be one of {sorted(TYPES)}, got {kind!r}")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaDefinitionError(f"{where}.properties must be an object")
    for name, sub in properties.items():
        check_schema(sub, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaDefinitionError(f"{where}.required must be a list of property names")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        check_schema(extra, f"{where}.additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise SchemaDefinitionError(f"{where}.enum must be a non-empty list")
    for bound in ("minimum", "maximum"):
        if bound in schema and not _is_number(schema[bound]):
            raise SchemaDefinitionError(f"{where}.{bound} must be a number")


def validate(value: Any, schema: Schema, where: str = "value") -> list[str]:
    """Every way ``value`` breaks ``schema`` (assumed checked), as short sentences; ``[]`` when valid."""
    violations: list[str] = []
    _validate(value, schema, where, violations)
    if len(violations) > MAX_VIOLATIONS:
        hidden = len(violations) - MAX_VIOLATIONS
        violations = [*violations[:MAX_VIOLATIONS], f"... and {hidden} more"]
    return violations


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return type(value) is bool
    return isinstance(value, TYPES[kind]) and type(value) is not bool


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _validate(value: Any, schema: Schema, where: str, out: list[str]) -> None:
    kind = schema.get("type")
    if kind is not None and not _type_ok(value, kind):
        article = "an" if kind[0] in "aeiou" else "a"
        out.append(f"{where}: must be {article} {kind}, got {_shown(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: must be one of {schema['enum']}, got {_shown(value)}")
    if _is_number(value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: must be >= {schema['minimum']}, got {_shown(value)}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: must be <= {schema['maximum']}, got {_shown(value)}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{where}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                _validate(item, properties[name], f"{where}.{name}", out)
            elif extra is False:
                out.append(f"{where}: unexpected property {_shown(name)}")
            elif isinstance(extra, dict):
                _validate(item, extra, f"{where}.{name}", out)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _validate(item, schema["items"], f"{where}[{index}]", out)
