"""Search, browse and buy in a text store, after WebShop (registered as ``webshop``).

An instruction names a product type, attributes, options and a price bound. The policy writes
WebShop's actions inside ``<answer>``; each page comes back inside ``<information>``::

    instruction : i am looking for a waterproof and padded backpack with color navy , price lower than 40.00 dollars
    <think> search the store </think> <answer> search[ waterproof padded backpack ] </answer>
    <information> results for waterproof padded backpack : [ p017 ] trailco waterproof padded backpack $ 34.99 ;
                  ... </information>
    <think> lower than 40.00 : p017 34.99 under . open p017 </think> <answer> click[ p017 ] </answer>
    <information> [ p017 ] trailco waterproof padded backpack ; price : $ 34.99 ; attributes : waterproof , padded ,
                  usb port ; color : black , navy ; selected : none </information>
    <think> with color navy </think> <answer> click[ navy ] </answer>
    <think> buy it </think> <answer> buy </answer>

``search[ query ]`` (BM25 over the catalogue) works from any page and shows the top ``top_k``
products; ``click[ id ]`` opens a product shown on the results page; ``click[ value ]`` on a
product page selects an option value; ``back`` returns to the results, or from them to the
search page; ``buy`` buys the open product with the selected options and ends the episode with
the reward of ``catalogue.purchase_reward`` (in [0, 1]; success when it is 1). Anything else,
or an action the page does not offer, is an error observation and costs a turn.

Task params (``catalogue_seed``/``num_products`` for a synthetic catalogue, or ``products_file``)::

    {"catalogue_seed": 4, "num_products": 60, "instruction": "i am looking for ...",
     "goal": {"asin": "p017", "type": "backpack", "department": "bags", "attributes": ["waterproof", "padded"],
              "options": {"color": "navy"}, "price_upper": 40.0},
     "top_k": 5, "max_turns": 7}
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from protocol import TaskSpec

from . import tags
from .base import EnvironmentError_
from .catalogue import (
    MAX_PRODUCTS,
    MIN_PRODUCTS,
    Catalogue,
    Goal,
    Product,
    best_reward,
    file_catalogue,
    purchase_reward,
    synthetic_catalogue,
)
from .datafiles import json_lines, sample_split, string_field
from .snapshots import require
from .splits import Proposal, check_split, distinct_tasks, split_parity
from .turns import TurnEnvironment

NAME = "webshop"
MAX_TURNS_CAP = 8
MAX_TOP_K = 10
MAX_QUERY_CHARS = 200
MAX_INSTRUCTION_CHARS = 1000
INSTRUCTION = (
    "find and buy what the instruction asks for . act with <answer> search[ words ] </answer> , "
    "<answer> click[ product id or option ] </answer> , <answer> back </answer> or <answer> buy </answer> ."
)
SEARCH_PAGE = "search page : write search[ words ]"

Page = Literal["search", "results", "item", "bought"]
PAGES: tuple[str, ...] = ("search", "results", "item", "bought")
_COMMAND = re.compile(r"(search|click)\s*\[\s*(.*?)\s*\]|(back|buy)", re.IGNORECASE)


# -- actions ----------------------------------------------------------------------------------


def parse_command(action_text: str) -> tuple[str, str] | str:
    """(verb, argument) of a store action, or an error message saying what is wrong with it."""
    parsed = tags.parse_action(action_text, ("answer",))
    if parsed is None:
        return "write <answer> search[ words ] </answer> , click[ id or option ] , back or buy"
    if len(parsed.content) > MAX_QUERY_CHARS + len("search[ ]"):
        return f"at most {MAX_QUERY_CHARS} characters inside the brackets"
    match = _COMMAND.fullmatch(parsed.content)
    if match is None:
        return "unknown action ; use search[ words ] , click[ id or option ] , back or buy"
    if match.group(3):
        return match.group(3).lower(), ""
    verb, argument = match.group(1).lower(), match.group(2).lower()
    if not argument:
        return f"{verb}[ ] needs something inside the brackets"
    return verb, argument


def option_phrases(options: Sequence[tuple[str, str]]) -> list[str]:
    """How an instruction words its wanted options: ``with color navy``, ``and size large``."""
    return [f"{'with' if index == 0 else 'and'} {dim} {value}" for index, (dim, value) in enumerate(options)]


def option_thought(instruction: str, options: Sequence[tuple[str, str]], value: str) -> str:
    """The thought before selecting ``value``: the instruction's own words for it, when it has them.

    ``with color navy`` (``and size large`` for a second option) makes the value the word that
    follows the thought's last word in the instruction, where a tiny model finds it by the
    previous token; ``choose navy`` asked it to pick the value out of the page's list.
    """
    for (_dim, wanted), phrase in zip(options, option_phrases(options), strict=True):
        if wanted == value and f" {phrase} " in f" {instruction} ":
            return phrase
    return f"choose {value}"


def open_thought(goal: Goal, results: Sequence[Product], chosen: Product) -> str:
    """The thought before opening ``chosen`` from the results: the instruction's price bound,
    each earlier result of the wanted type priced over it, then the chosen one::

        lower than 50.00 : p009 73.99 over , p012 63.99 over , p042 48.99 under . open p042

    Picking the product in one word asked a tiny model to compare every listed price with a
    bound ~100 tokens back; here each verdict compares two numbers a few tokens apart, and the
    bound follows "lower than" as it does in the instruction.
    """
    scanned = []
    for product in results:
        if product.asin == chosen.asin:
            break
        if product.type == goal.type and product.price > goal.price_upper:
            scanned.append(f"{product.asin} {product.price:.2f} over")
    verdict = "under" if chosen.price <= goal.price_upper else "over"
    scanned.append(f"{chosen.asin} {chosen.price:.2f} {verdict}")
    return f"lower than {goal.price_upper:.2f} : {' , '.join(scanned)} . open {chosen.asin}"


def command_turn(verb: str, argument: str = "", thought: str = "") -> str:
    action = f"{verb}[ {argument} ]" if argument else verb
    return f"{tags.think(thought or verb)} {tags.answer(action)}"


# -- pages ------------------------------------------------------------------------------------


def _price(value: float) -> str:
    return f"$ {value:.2f}"


def results_page(query: str, products: tuple[Product, ...]) -> str:
    if not products:
        return f"no results for {query}"
    listed = " ; ".join(f"[ {p.asin} ] {p.title} {_price(p.price)}" for p in products)
    return f"results for {query} : {listed}"


def item_page(product: Product, selected: dict[str, str]) -> str:
    options = " ; ".join(f"{dim} : {' , '.join(values)}" for dim, values in product.options)
    chosen = " , ".join(f"{dim} {value}" for dim, value in selected.items()) or "none"
    parts = [
        f"[ {product.asin} ] {product.title}",
        f"price : {_price(product.price)}",
        f"attributes : {' , '.join(product.attributes) or 'none'}",
        *([options] if options else []),
        f"selected : {chosen}",
    ]
    return " ; ".join(parts)


# -- tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShopTask:
    catalogue: Catalogue
    goal: Goal
    instruction: str
    top_k: int
    max_turns: int

    @property
    def target(self) -> Product:
        return self.catalogue.by_asin[self.goal.asin]


def goal_params(goal: Goal) -> dict[str, Any]:
    return {
        "asin": goal.asin,
        "type": goal.type,
        "department": goal.department,
        "attributes": list(goal.attributes),
        "options": dict(goal.options),
        "price_upper": goal.price_upper,
    }


def instruction_text(goal: Goal) -> str:
    wanted = f"i am looking for a {' and '.join(goal.attributes)} {goal.type}"
    if goal.options:
        wanted += " " + " ".join(option_phrases(goal.options))
    return f"{wanted} , price lower than {goal.price_upper:.2f} dollars"


def parse_task(params: dict[str, Any]) -> ShopTask:
    """Task params -> task, with ``EnvironmentError_`` naming the first bad field."""
    instruction, top_k, max_turns = params.get("instruction"), params.get("top_k"), params.get("max_turns")
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise EnvironmentError_(
            f"webshop task instruction must be a non-empty string of at most {MAX_INSTRUCTION_CHARS} chars"
        )
    if type(top_k) is not int or not 1 <= top_k <= MAX_TOP_K:
        raise EnvironmentError_(f"webshop task top_k must be an int in [1, {MAX_TOP_K}], got {top_k!r}")
    if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
        raise EnvironmentError_(f"webshop task max_turns must be an int in [1, {MAX_TURNS_CAP}], got {max_turns!r}")
    if isinstance(params.get("products_file"), str):
        catalogue = file_catalogue(params["products_file"])
    elif type(params.get("catalogue_seed")) is int and type(params.get("num_products")) is int:
        catalogue = synthetic_catalogue(params["catalogue_seed"], params["num_products"])
    else:
        raise EnvironmentError_(
            "webshop task needs 'products_file' (a path) or 'catalogue_seed' and 'num_products' (ints)"
        )
    goal = read_goal(params.get("goal"), catalogue)
    return ShopTask(catalogue, goal, instruction, top_k, max_turns)


def read_goal(plain: Any, catalogue: Catalogue) -> Goal:
    """A goal from its plain form; it must name a product of ``catalogue`` that fulfils it."""
    if not isinstance(plain, dict):
        raise EnvironmentError_(f"webshop goal must be an object, got {type(plain).__name__}")
    fields: tuple[Any, ...] = tuple(plain.get(k) for k in ("asin", "attributes", "options", "price_upper"))
    asin, attributes, options, price_upper = fields
    if not isinstance(asin, str) or asin not in catalogue.by_asin:
        raise EnvironmentError_(f"webshop goal asin {asin!r} is not in the catalogue")
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise EnvironmentError_(f"webshop goal attributes must be a list of strings, got {attributes!r}")
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise EnvironmentError_(f"webshop goal options must map a dimension to a value, got {options!r}")
    if type(price_upper) not in (int, float) or not math.isfinite(price_upper):
        raise EnvironmentError_(f"webshop goal price_upper must be a number, got {price_upper!r}")
    target = catalogue.by_asin[asin]
    goal = Goal(asin, target.type, target.department, tuple(attributes), tuple(options.items()), float(price_upper))
    if (plain.get("type"), plain.get("department")) != (goal.type, goal.department):
        raise EnvironmentError_(
            f"webshop goal type and department must be those of {asin}: {goal.type}, {goal.department}"
        )
    if best_reward(goal, target) < 1.0:
        raise EnvironmentError_(
            f"webshop goal is not fulfilled by its own product {asin} (attributes, options or price)"
        )
    return goal


class WebShopEnvironment(TurnEnvironment):
    name = NAME
    stop_strings = tags.STORE_STOP_STRINGS
    special_tokens = tags.STORE_TAGS
    max_turns = MAX_TURNS_CAP
    graded_reward = True

    def __init__(self) -> None:
        super().__init__()
        self._shop: ShopTask | None = None
        self._page: Page = "search"
        self._query = ""
        self._asin = ""
        #: Option dimension -> the selected value, on the open product.
        self._selected: dict[str, str] = {}

    @property
    def shop(self) -> ShopTask:
        return self._started(self._shop)

    @property
    def page(self) -> Page:
        return self._page

    @property
    def product(self) -> Product | None:
        """The open (or bought) product."""
        return self.shop.catalogue.by_asin[self._asin] if self._asin else None

    def results(self) -> tuple[Product, ...]:
        return self.shop.catalogue.search(self._query, self.shop.top_k) if self._query else ()

    def reset(self, task: TaskSpec) -> str:
        self._start(task)
        return f"{INSTRUCTION}\ninstruction : {self.shop.instruction}"

    def score(self) -> float:
        """The purchase's reward once bought; on a product page half its best reward plus 0.4 of
        buying it as selected now; on the results page half the best reward they offer."""
        if self._done:
            return self._reward
        goal, product = self.shop.goal, self.product
        if product is not None:
            return 0.5 * best_reward(goal, product) + 0.4 * purchase_reward(goal, product, self._selected)
        return 0.5 * max((best_reward(goal, p) for p in self.results()), default=0.0)

    def expert_action(self) -> str:
        """Search the goal's query; open the best product shown (searching the target's title when
        the query shows none that fulfils the goal); select the wanted options; buy."""
        goal, product = self.shop.goal, self.product
        if self._page == "item" and product is not None:
            if best_reward(goal, product) >= 1.0 or self.turns_left <= 1:
                return self.item_action()
            return command_turn("back", thought="not this one")
        if self._page == "results":
            results = self.results()
            best = max(results, key=lambda p: best_reward(goal, p), default=None)
            if best is not None and best_reward(goal, best) >= 1.0:
                return command_turn("click", best.asin, open_thought(goal, results, best))
            for query in (goal.query, self.shop.target.title):
                if self._query != query:
                    return command_turn("search", query, "search the store")
            if best is not None:
                return command_turn("click", best.asin, open_thought(goal, results, best))
        return command_turn("search", goal.query, "search the store")

    def item_action(self, skip_dims: frozenset[str] = frozenset()) -> str:
        """On a product page: select the next wanted option it offers (outside ``skip_dims``), then buy."""
        product = self.product
        if product is not None and self.turns_left > 1:
            for _dim, value in self.shop.goal.options:
                offered_dim = product.option_values.get(value)
                if offered_dim is None or offered_dim in skip_dims or self._selected.get(offered_dim) == value:
                    continue
                thought = option_thought(self.shop.instruction, self.shop.goal.options, value)
                return command_turn("click", value, thought)
        return command_turn("buy", thought="buy it")

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        self._shop = parse_task(task.params)
        self.max_turns = self._shop.max_turns
        self._page, self._query, self._asin, self._selected = "search", "", "", {}

    def _act(self, action_text: str) -> str:
        command = parse_command(action_text)
        if isinstance(command, str):
            return tags.information(f"error : {command}")
        verb, argument = command
        if verb == "search":
            self._page, self._query, self._asin, self._selected = "results", argument, "", {}
            return tags.information(results_page(argument, self.results()))
        if verb == "back":
            return tags.information(self._back())
        if verb == "click":
            return tags.information(self._click(argument))
        product = self.product
        if self._page != "item" or product is None:
            return tags.information("error : open a product before buying")
        self._page, self._done = "bought", True
        self._reward = purchase_reward(self.shop.goal, product, self._selected)
        return ""

    def _back(self) -> str:
        if self._page == "item":
            self._page, self._asin, self._selected = "results", "", {}
            return results_page(self._query, self.results())
        if self._page == "results":
            self._page, self._query = "search", ""
            return SEARCH_PAGE
        return "error : nothing to go back to ; search first"

    def _click(self, argument: str) -> str:
        if self._page == "results":
            shown = {p.asin.lower(): p for p in self.results()}
            product = shown.get(argument)
            if product is None:
                return f"error : no product {argument} on this page ; click an id shown in the results"
            self._page, self._asin, self._selected = "item", product.asin, {}
            return item_page(product, self._selected)
        product = self.product
        if self._page == "item" and product is not None:
            dim = product.option_values.get(argument)
            if dim is None:
                return f"error : this product has no option {argument}"
            self._selected[dim] = argument
            return item_page(product, self._selected)
        return "error : nothing to click on the search page ; search first"

    def _own_state(self) -> dict[str, Any]:
        return {"page": self._page, "query": self._query, "asin": self._asin, "selected": dict(self._selected)}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        fields: tuple[Any, ...] = tuple(snapshot.get(k) for k in ("page", "query", "asin", "selected"))
        page, query, asin, selected = fields
        require(page in PAGES, f"snapshot page must be one of {list(PAGES)}, got {page!r}")
        require(isinstance(query, str) and len(query) <= MAX_QUERY_CHARS, "snapshot query must be a short string")
        require(isinstance(asin, str), "snapshot asin must be a string")
        require(
            isinstance(selected, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in selected.items()),
            "snapshot selected must map option dimensions to values",
        )
        fits = (page == "search") == (query == "") and (page == "search" or turn >= 1)
        require(fits, "snapshot query does not fit its page")
        self._page, self._query = page, query
        if page in ("item", "bought"):
            require(asin in {p.asin for p in self.results()}, f"snapshot product {asin!r} is not among its results")
            product = self.shop.catalogue.by_asin[asin]
            offered = all(product.option_values.get(v) == d for d, v in selected.items())
            require(offered, "snapshot selects options the product lacks")
        else:
            require(asin == "" and not selected, "snapshot selects a product outside a product page")
        self._asin, self._selected = asin, dict(selected)
        if page == "bought":
            bought = self.shop.catalogue.by_asin[asin]
            paid = purchase_reward(self.shop.goal, bought, self._selected)
            require(done and reward == paid, "snapshot reward does not match its purchase")
        else:
            require(reward == 0.0, "snapshot has a reward without a purchase")


# -- generated tasks --------------------------------------------------------------------------

MAX_ATTRIBUTES = 3
MAX_OPTIONS = 2


def draw_goal(rng: random.Random, catalogue: Catalogue, attributes: int, options: int) -> Goal | None:
    target = rng.choice(catalogue.products)
    if options > len(target.options):
        return None
    picked = set(rng.sample(target.attributes, attributes))
    wanted = tuple(a for a in target.attributes if a in picked)
    dims = rng.sample(target.options, options)
    chosen = tuple((dim, rng.choice(values)) for dim, values in sorted(dims, key=target.options.index))
    price_upper = float(math.ceil(target.price / 5) * 5)
    return Goal(target.asin, target.type, target.department, wanted, chosen, price_upper)


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    num_products: int = 60,
    num_catalogues: int = 8,
    min_attributes: int = 1,
    max_attributes: int = 2,
    min_options: int = 0,
    max_options: int = 2,
    top_k: int = 5,
    slack: int = 2,
    products_file: str = "",
    train_file: str = "",
    heldout_file: str = "",
) -> list[TaskSpec]:
    """``count`` distinct instructions of ``split``.

    Difficulty: ``num_products`` per catalogue (look-alike families make a bigger one harder to
    search), the wanted ``attributes`` (1-3) and ``options`` (0-2), ``top_k`` results per search
    and a turn cap of the expert's turns (search, open, one per option, buy) plus ``slack``. Each
    split has its own ``num_catalogues`` catalogues, so held-out instructions are about products
    the training ones never show; only instructions whose obvious search shows a product that
    fulfils them are kept.

    With ``products_file``, ``train_file`` and ``heldout_file`` (JSONL, see ``load_products`` and
    ``load_instructions``) the tasks come from those files; ``top_k`` and ``slack`` still apply.
    """
    check_split(split)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be in [1, {MAX_TOP_K}], got {top_k}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    if products_file or train_file or heldout_file:
        return dataset_tasks(
            split,
            count,
            seed,
            products_file=products_file,
            train_file=train_file,
            heldout_file=heldout_file,
            top_k=top_k,
            slack=slack,
        )
    if not MIN_PRODUCTS <= num_products <= MAX_PRODUCTS:
        raise ValueError(f"num_products must be in [{MIN_PRODUCTS}, {MAX_PRODUCTS}], got {num_products}")
    if num_catalogues < 1:
        raise ValueError(f"num_catalogues must be >= 1, got {num_catalogues}")
    if not 1 <= min_attributes <= max_attributes <= MAX_ATTRIBUTES:
        raise ValueError(
            f"need 1 <= min_attributes <= max_attributes <= {MAX_ATTRIBUTES}, got {min_attributes}, {max_attributes}"
        )
    if not 0 <= min_options <= max_options <= MAX_OPTIONS:
        raise ValueError(f"need 0 <= min_options <= max_options <= {MAX_OPTIONS}, got {min_options}, {max_options}")
    parity = split_parity(split)

    def propose(rng: random.Random) -> Proposal | None:
        catalogue_seed = 2 * rng.randrange(num_catalogues) + parity
        catalogue = synthetic_catalogue(catalogue_seed, num_products)
        attributes, options = rng.randint(min_attributes, max_attributes), rng.randint(min_options, max_options)
        goal = draw_goal(rng, catalogue, attributes, options)
        if goal is None or not any(best_reward(goal, p) >= 1.0 for p in catalogue.search(goal.query, top_k)):
            return None
        instruction = instruction_text(goal)
        params = {
            "catalogue_seed": catalogue_seed,
            "num_products": num_products,
            "instruction": instruction,
            "goal": goal_params(goal),
            "top_k": top_k,
            "max_turns": min(MAX_TURNS_CAP, 3 + len(goal.options) + slack),
        }
        return f"{catalogue_seed}:{num_products}:{instruction}:{goal.asin}", lambda: params

    return distinct_tasks(NAME, split, count, seed, propose, attempts_per_task=50)


# -- real data: JSONL products and instructions -----------------------------------------------


@dataclass(frozen=True)
class DatasetInstruction:
    line: int
    instruction: str
    goal: Goal

    @property
    def key(self) -> str:
        """What identifies the instruction across files: its product and its text."""
        return f"{self.goal.asin}:{self.instruction}"


def _normalised(value: Any) -> Any:
    """A string as the catalogue holds it (lower case, single spaces); anything else unchanged."""
    return " ".join(value.split()).lower() if isinstance(value, str) else value


def load_instructions(path: str | os.PathLike[str], catalogue: Catalogue) -> list[DatasetInstruction]:
    """Instructions of a JSONL file, one a line: ``asin`` (the product that fulfils it),
    ``instruction`` (text), ``attributes`` (list), ``options`` (dimension -> value) and
    ``price_upper``. The product must fulfil the rest. A bad line names the file and the line."""
    path = Path(path)
    records = []
    for number, record in json_lines(path):
        instruction = " ".join(string_field(path, number, record, "instruction").split())
        asin = string_field(path, number, record, "asin")
        target = catalogue.by_asin.get(asin)
        if target is None:
            raise EnvironmentError_(f"{path}:{number}: asin {asin!r} is not in the product file")
        attributes, options = record.get("attributes"), record.get("options")
        if isinstance(attributes, list):
            attributes = [_normalised(a) for a in attributes]
        if isinstance(options, dict):
            options = {_normalised(d): _normalised(v) for d, v in options.items()}
        plain = {
            "asin": asin,
            "type": target.type,
            "department": target.department,
            "attributes": attributes,
            "options": options,
            "price_upper": record.get("price_upper"),
        }
        try:
            goal = read_goal(plain, catalogue)
        except EnvironmentError_ as err:
            raise EnvironmentError_(f"{path}:{number}: {err}") from None
        records.append(DatasetInstruction(number, instruction, goal))
    return records


def dataset_tasks(
    split: str, count: int, seed: int, *, products_file: str, train_file: str, heldout_file: str, top_k: int, slack: int
) -> list[TaskSpec]:
    """``count`` instructions sampled from the split's own file (``datafiles.sample_split``)."""
    if not products_file:
        raise ValueError("webshop data needs products_file as well as train_file and heldout_file")
    catalogue = file_catalogue(products_file)
    resolved = str(Path(products_file).resolve())

    def load(path: str) -> list[DatasetInstruction]:
        return load_instructions(path, catalogue)

    picked = sample_split(NAME, split, count, seed, (train_file, heldout_file), load, lambda r: r.key)
    return [
        TaskSpec(
            env=NAME,
            task_id=f"{NAME}-{split}-{hashlib.sha256(r.key.encode()).hexdigest()[:16]}",
            params={
                "products_file": resolved,
                "instruction": r.instruction,
                "goal": goal_params(r.goal),
                "top_k": top_k,
                "max_turns": min(MAX_TURNS_CAP, 3 + len(r.goal.options) + slack),
            },
        )
        for r in picked
    ]
