"""The store's products for the WebShop-style environment: a seeded synthetic catalogue or a
JSONL product file, a BM25 search over it (``bm25s``), and the purchase reward.

A product has a title, a department and a type, attributes ("waterproof", "padded"), option
dimensions with the values it is offered in (``color: navy , black``) and a price. The
synthetic catalogue draws products in families that share a type and attributes but differ in
brand, price and options, so the right product must be told from close look-alikes. Its titles
show two of a product's three attributes; the third is on the product's page only.

The reward of buying ``product`` with the options ``selected`` for a goal, after WebShop::

    r = r_type * (|A_goal & A_product| + |O_goal & O_selected| + [price <= price_upper])
                 / (|A_goal| + |O_goal| + 1)

with r_type = 1 for the wanted type, 0.5 for another type of the same department and 0
otherwise. Attributes and options match exactly (WebShop also matches them fuzzily against
the title); an option counts when its value is among the selected values. The reward is in
[0, 1], and 1 exactly when type, attributes, options and price all match.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from tracerl.logs import get_logger

from .base import EnvironmentError_
from .datafiles import built_from_file, json_lines, string_field
from .retrieval import Document, SearchIndex

_log = get_logger(__name__)


@dataclass(frozen=True)
class Product:
    asin: str
    title: str
    department: str
    type: str
    attributes: tuple[str, ...]
    #: (dimension, the values offered) pairs; values are distinct across a product's dimensions.
    options: tuple[tuple[str, tuple[str, ...]], ...]
    price: float

    @cached_property
    def option_values(self) -> dict[str, str]:
        """Every offered value -> its dimension."""
        return {value: dim for dim, values in self.options for value in values}


@dataclass(frozen=True)
class Goal:
    """What an instruction asks for; ``asin`` names a product that fulfils it."""

    asin: str
    type: str
    department: str
    attributes: tuple[str, ...]
    #: (dimension, wanted value) pairs.
    options: tuple[tuple[str, str], ...]
    price_upper: float

    @property
    def query(self) -> str:
        """The obvious search: the wanted attributes and type."""
        return " ".join((*self.attributes, self.type))


def purchase_reward(goal: Goal, product: Product, selected: dict[str, str]) -> float:
    """WebShop's reward of buying ``product`` with the options ``selected`` (see the module doc)."""
    if product.type == goal.type:
        type_match = 1.0
    elif product.department == goal.department:
        type_match = 0.5
    else:
        return 0.0
    chosen = set(selected.values())
    matched = (
        len(set(goal.attributes) & set(product.attributes))
        + sum(value in chosen for _, value in goal.options)
        + (product.price <= goal.price_upper)
    )
    return type_match * matched / (len(goal.attributes) + len(goal.options) + 1)


def best_reward(goal: Goal, product: Product) -> float:
    """The reward of ``product`` bought with every wanted option it offers selected."""
    offered = {dim: value for dim, value in goal.options if value in product.option_values}
    return purchase_reward(goal, product, offered)


class Catalogue:
    """Products by id, with a BM25 index over their titles, types and attributes."""

    def __init__(self, products: list[Product]) -> None:
        if not products:
            raise ValueError("a catalogue needs at least one product")
        self.products: tuple[Product, ...] = tuple(products)
        self.by_asin: dict[str, Product] = {p.asin: p for p in products}
        documents = [Document(p.asin, p.title, " ".join((*p.attributes, p.type, p.department))) for p in products]
        self._index = SearchIndex(documents)

    def search(self, query: str, top_k: int) -> tuple[Product, ...]:
        return tuple(self.products[i] for i in self._index.search_ids(query, top_k))


# -- the synthetic catalogue ------------------------------------------------------------------

COLORS: tuple[str, ...] = ("black", "white", "navy", "blue", "red", "green", "grey")


@dataclass(frozen=True)
class Department:
    name: str
    types: tuple[str, ...]
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]


DEPARTMENTS: tuple[Department, ...] = (
    Department(
        "clothing",
        ("t-shirt", "hoodie", "jacket", "sweater"),
        ("cotton", "wool", "fleece", "breathable", "machine washable", "slim fit", "long sleeve", "water resistant"),
        (("size", ("small", "medium", "large", "x-large")), ("color", COLORS)),
    ),
    Department(
        "footwear",
        ("sneakers", "boots", "sandals", "slippers"),
        ("leather", "waterproof", "non slip", "lightweight", "breathable", "memory foam", "arch support", "slip on"),
        (("size", ("size 7", "size 8", "size 9", "size 10", "size 11")), ("color", COLORS)),
    ),
    Department(
        "bags",
        ("backpack", "tote bag", "duffel bag", "wallet"),
        ("waterproof", "leather", "lightweight", "padded", "anti theft", "usb port", "zipper", "large capacity"),
        (("color", COLORS),),
    ),
    Department(
        "kitchen",
        ("mug", "kettle", "water bottle", "lunch box"),
        ("stainless steel", "ceramic", "dishwasher safe", "insulated", "bpa free", "leak proof", "microwave safe"),
        (("capacity", ("12 oz", "16 oz", "20 oz", "32 oz")), ("color", COLORS)),
    ),
    Department(
        "electronics",
        ("headphones", "speaker", "charger", "keyboard"),
        ("wireless", "bluetooth", "noise cancelling", "fast charging", "portable", "rechargeable", "usb c"),
        (("color", ("black", "white", "grey", "blue")),),
    ),
)
BRANDS: tuple[str, ...] = ("trailco", "urbanite", "nordik", "zenware", "pixelo", "apex", "lumo", "kiva")
ATTRIBUTES_PER_PRODUCT = 3
MIN_PRODUCTS, MAX_PRODUCTS = 10, 500


def _draw_family(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Up to ``size`` products of one type and attribute set that differ in brand, price and options."""
    department = rng.choice(DEPARTMENTS)
    kind = rng.choice(department.types)
    attributes = tuple(rng.sample(department.attributes, ATTRIBUTES_PER_PRODUCT))
    base = rng.randint(10, 80)
    family = []
    for brand in rng.sample(BRANDS, min(size, rng.randint(2, 4))):
        options = []
        for dim, values in department.options:
            chosen = set(rng.sample(values, rng.randint(2, len(values))))
            options.append((dim, tuple(v for v in values if v in chosen)))
        family.append(
            {
                "title": f"{brand} {attributes[0]} {attributes[1]} {kind}",
                "department": department.name,
                "type": kind,
                "attributes": attributes,
                "options": tuple(options),
                # Whole dollars less a cent, as shops price.
                "price": max(5, base + rng.randint(-10, 15)) - 0.01,
            }
        )
    return family


@lru_cache(maxsize=64)
def synthetic_catalogue(seed: int, num_products: int) -> Catalogue:
    """The catalogue of ``num_products`` products that ``seed`` draws (the same in every process)."""
    if not MIN_PRODUCTS <= num_products <= MAX_PRODUCTS:
        raise EnvironmentError_(f"num_products must be in [{MIN_PRODUCTS}, {MAX_PRODUCTS}], got {num_products}")
    rng = random.Random(f"catalogue:{seed}:{num_products}")
    drawn: list[dict[str, Any]] = []
    while len(drawn) < num_products:
        drawn += _draw_family(rng, num_products - len(drawn))
    rng.shuffle(drawn)
    return Catalogue([Product(asin=f"p{i:03d}", **fields) for i, fields in enumerate(drawn, start=1)])


# -- real data: a JSONL product file ----------------------------------------------------------

MAX_FIELD_CHARS = 200


def _strings(path: Path, number: int, value: Any, field: str, allow_empty: bool = True) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or (not value and not allow_empty)
        or not all(isinstance(v, str) and v.strip() and len(v) <= MAX_FIELD_CHARS for v in value)
    ):
        shown = repr(value)[:120]
        raise EnvironmentError_(f"{path}:{number}: field {field!r} must be a list of non-empty strings, got {shown}")
    return tuple(" ".join(v.split()).lower() for v in value)


def read_product(path: Path, number: int, record: dict[str, Any]) -> Product:
    """One product line: ``asin``, ``title``, ``department``, ``type`` (strings), ``attributes``
    (a list of strings), ``options`` (dimension -> the values offered) and ``price`` (> 0)."""
    asin, title, department, kind = (
        " ".join(string_field(path, number, record, f).split()) for f in ("asin", "title", "department", "type")
    )
    attributes = _strings(path, number, record.get("attributes"), "attributes")
    raw_options = record.get("options", {})
    if not isinstance(raw_options, dict):
        raise EnvironmentError_(f"{path}:{number}: field 'options' must map a dimension to its values")
    options = tuple(
        (" ".join(dim.split()).lower(), _strings(path, number, values, f"options.{dim}", allow_empty=False))
        for dim, values in raw_options.items()
    )
    offered = [value for _, values in options for value in values]
    if len(set(offered)) != len(offered):
        raise EnvironmentError_(f"{path}:{number}: an option value appears twice (they must differ across dimensions)")
    price: Any = record.get("price")
    if type(price) not in (int, float) or not 0 < price < 1e6 or not math.isfinite(price):
        raise EnvironmentError_(f"{path}:{number}: field 'price' must be a positive number, got {price!r}")
    return Product(asin, title.lower(), department.lower(), kind.lower(), attributes, options, float(price))


def load_products(path: str | os.PathLike[str]) -> list[Product]:
    """The products of a JSONL file (``read_product``); a bad line names the file and the line."""
    path = Path(path)
    products, seen = [], set()
    for number, record in json_lines(path):
        product = read_product(path, number, record)
        if product.asin in seen:
            raise EnvironmentError_(f"{path}:{number}: asin {product.asin!r} appears twice")
        seen.add(product.asin)
        products.append(product)
    if not products:
        raise EnvironmentError_(f"{path}: the product file is empty")
    return products


def file_catalogue(products_file: str) -> Catalogue:
    """The catalogue of ``products_file``, rebuilt only when the file changes."""
    return built_from_file(products_file, "product file", _index_catalogue)


def _index_catalogue(path: str) -> Catalogue:
    catalogue = Catalogue(load_products(path))
    _log.info("catalogue_indexed", path=path, products=len(catalogue.products))
    return catalogue
