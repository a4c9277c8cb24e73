"""typed's strict conversion between plain data and config dataclasses."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from protocol import SamplingSpec
from tracerl.typed import SchemaError, from_plain, to_plain


@dataclass(frozen=True, slots=True)
class Slotted:
    x: int
    ids: list[int]


@dataclass(frozen=True)
class Child(Slotted):  # has a __dict__, but its base's fields live in slots
    y: str | None


@dataclass
class Tree:
    a: Slotted
    children: list[Child]
    extra: dict[str, Any]
    score: float
    sampling: SamplingSpec = field(default_factory=SamplingSpec)


def test_round_trip_and_errors_name_the_field() -> None:
    tree = Tree(Slotted(1, [1, 2]), [Child(2, [3], None)], {"k": (1, 2)}, 0.5, SamplingSpec(temperature=0.5))
    plain = to_plain(tree)
    assert plain == {
        "a": {"x": 1, "ids": [1, 2]},
        "children": [{"x": 2, "ids": [3], "y": None}],
        "extra": {"k": [1, 2]},
        "score": 0.5,
        "sampling": {"temperature": 0.5, "top_p": 1.0, "max_tokens_per_turn": 64, "seed": None},
    }
    assert from_plain(Tree, plain) == Tree(Slotted(1, [1, 2]), [Child(2, [3], None)], {"k": [1, 2]}, 0.5, tree.sampling)

    # int -> float is the one conversion; a wrong value is refused with its field named.
    assert type(from_plain(Tree, {**plain, "score": 1}).score) is float
    with pytest.raises(SchemaError, match=r"children\[0\]\.y"):
        from_plain(Tree, {**plain, "children": [{**plain["children"][0], "y": 3}]})
    with pytest.raises(SchemaError, match=r"^a\.x: expected an integer, got True"):
        from_plain(Tree, {**plain, "a": {"x": True, "ids": []}})
    with pytest.raises(SchemaError, match=r"missing required field"):
        from_plain(Tree, {k: v for k, v in plain.items() if k != "sampling"})
    assert from_plain(
        Tree, {k: v for k, v in plain.items() if k != "sampling"}, allow_missing_defaults=True
    ).sampling == (SamplingSpec())
    # A protocol message in a config is judged by its own schema, its range checks too.
    with pytest.raises(SchemaError, match=r"^sampling\.top_p: Expected `float` > 0\.0"):
        from_plain(Tree, {**plain, "sampling": {"top_p": 0.0}})
    with pytest.raises(SchemaError, match=r"^sampling: Object contains unknown field `topp`"):
        from_plain(Tree, {**plain, "sampling": {"topp": 0.5}})
