"""The shortcuts in typed's encoder and decoder give what the field-by-field rules give."""

import struct
from dataclasses import dataclass
from typing import Any

import pytest

from tracerl.typed import Float32List, Int32List, SchemaError, from_plain, to_plain


@dataclass(frozen=True, slots=True)
class Slotted:
    x: int
    ids: Int32List


@dataclass(frozen=True)
class Child(Slotted):  # has a __dict__, but its base's fields live in slots
    y: str | None


@dataclass
class Mutable:
    a: Slotted
    children: list[Child]
    extra: dict[str, Any]
    score: float
    probs: Float32List


def test_fast_paths_agree_with_the_field_by_field_rules() -> None:
    message = Mutable(Slotted(1, [1, 2]), [Child(2, [3], None)], {"k": (1, 2)}, 0.5, [-0.5, -0.25])
    plain = to_plain(message)
    assert plain == {
        "a": {"x": 1, "ids": struct.pack("2i", 1, 2)},
        "children": [{"x": 2, "ids": struct.pack("i", 3), "y": None}],
        "extra": {"k": [1, 2]},
        "score": 0.5,
        "probs": struct.pack("2f", -0.5, -0.25),
    }
    back = from_plain(Mutable, plain)
    assert back == Mutable(Slotted(1, [1, 2]), [Child(2, [3], None)], {"k": [1, 2]}, 0.5, [-0.5, -0.25])

    # A value the decoder would convert still is converted (int -> float), and a wrong
    # one is still refused, with the field named.
    assert type(from_plain(Mutable, {**plain, "score": 1}).score) is float
    with pytest.raises(SchemaError, match=r"children\[0\]\.y"):
        from_plain(Mutable, {**plain, "children": [{**plain["children"][0], "y": 3}]})
    with pytest.raises(SchemaError, match="probs: packed array of 7 bytes"):
        from_plain(Mutable, {**plain, "probs": plain["probs"][:7]})
