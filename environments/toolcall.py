"""Multi-turn function calling against a stateful store API (registered as ``toolcall``).

The task states a customer's request in words; the policy calls the store's functions
(``environments.storeapi``) one per turn in Qwen3's native tool-call form, and replies when the
request is done::

    request : i am Ana Ruiz . cancel my pending lamp order , i ordered it by mistake .
    <think> step 1 i am Ana Ruiz . find_user Ana Ruiz </think>
    <tool_call> {"name": "find_user", "arguments": {"name": "Ana Ruiz"}} </tool_call>
    <tool_response> {"user_id": "u2", "name": "Ana Ruiz", "balance": 40, "orders": ["o3", "o5"]} </tool_response>
    ... get_order o3, o5, cancel_order o5 ...
    <think> the request is done </think> <answer> done </answer>

The reward is 1 when the final database equals the task's goal state, as in tau-bench: any call
sequence that reaches it succeeds, and none is compared against a reference. The final state is
judged when the policy answers or when the turn cap ends the episode.

Each observation is the function's JSON result, or a structured JSON error: ``no_action``,
``too_long``, ``invalid_json``, ``bad_call`` (not ``{"name": ..., "arguments": {...}}``),
``unknown_function``, ``invalid_arguments`` (with the schema ``violations``), ``not_found`` or
``precondition_failed``. The episode goes on after any of them.

A task is plain data, whether generated here or read from a JSONL file (``load_tasks``)::

    {"instruction": "i am Ana Ruiz . cancel my pending lamp order , i ordered it by mistake .",
     "tools": ["find_user", "get_order", "cancel_order", ...],
     "initial": <database>, "goal": <database>,
     "solution": [{"name": "find_user", "arguments": {"name": "Ana Ruiz"}}, ...],
     "max_turns": 5}

``solution`` is a call sequence that turns the initial state into the goal (checked when the
task is read); the expert and the score follow it. It may be empty for real data, whose tasks
then have no expert.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from protocol import TaskSpec

from . import tags
from .argschema import Schema, validate
from .base import EnvironmentError_
from .datafiles import json_lines, sample_split
from .kb import FIRST_NAMES, LAST_NAMES
from .snapshots import require
from .splits import Proposal, check_split, distinct_tasks
from .storeapi import REASONS, TOOLS, Database, ToolError, copy_database, database_problems, signature
from .turns import TurnEnvironment

NAME = "toolcall"
MAX_TURNS_CAP = 10
MAX_CALL_CHARS = 2000
MAX_INSTRUCTION_CHARS = 1000
INSTRUCTION = (
    'you are the store assistant . call one tool per turn as <tool_call> {"name": tool , "arguments": {...}} '
    "</tool_call> and reply <answer> done </answer> when the request is complete ."
)


@dataclass(frozen=True)
class Call:
    name: str
    #: The arguments as canonical JSON (sorted keys): calls compare by value and hash.
    arguments_json: str

    @property
    def arguments(self) -> dict[str, Any]:
        return json.loads(self.arguments_json)

    def text(self) -> str:
        """The call as the policy writes it."""
        return json.dumps({"name": self.name, "arguments": self.arguments})

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


def make_call(name: str, arguments: dict[str, Any]) -> Call:
    return Call(name, json.dumps(arguments, sort_keys=True))


@dataclass(frozen=True)
class ToolTask:
    instruction: str
    tools: tuple[str, ...]
    #: The initial database as JSON, decoded afresh for every episode.
    initial_json: str
    goal: Database
    solution: tuple[Call, ...]
    max_turns: int

    def initial(self) -> Database:
        return json.loads(self.initial_json)


# -- running calls ----------------------------------------------------------------------------


def error(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": kind, "message": message, **details}


def read_call(text: str, tools: tuple[str, ...]) -> Call | dict[str, Any]:
    """The call in a tool call's JSON text, or the structured error saying what is wrong with it."""
    return parse_call(text, {name: TOOLS[name].parameters for name in tools}, MAX_CALL_CHARS)


def parse_call(text: str, schemas: dict[str, Schema], max_chars: int) -> Call | dict[str, Any]:
    """The call in ``{"name": ..., "arguments": {...}}`` text to one of the functions whose argument
    schemas ``schemas`` holds, or the structured error saying what is wrong with it."""
    if len(text) > max_chars:
        return error("too_long", f"a tool call has at most {max_chars} characters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return error("invalid_json", f"{err.msg} at character {err.pos}")
    except RecursionError:
        return error("invalid_json", "nested too deeply")
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or set(value) - {"name", "arguments"}:
        return error("bad_call", 'a tool call is {"name": string , "arguments": object}')
    arguments = value.get("arguments", {})
    if not isinstance(arguments, dict):
        return error("bad_call", f"arguments must be an object, got {type(arguments).__name__}")
    if value["name"] not in schemas:
        return error("unknown_function", f"no function {value['name'][:60]!r} ; available : {' , '.join(schemas)}")
    violations = validate(arguments, schemas[value["name"]], "arguments")
    if violations:
        message = f"arguments do not match the schema of {value['name']}"
        return error("invalid_arguments", message, violations=violations)
    return make_call(value["name"], arguments)


def run_call(db: Database, call: Call) -> dict[str, Any]:
    """Apply a well-formed call to ``db``: its result, or the error of a failed lookup or precondition."""
    try:
        return TOOLS[call.name].run(db, call.arguments)
    except ToolError as err:
        return error(err.kind, err.message)


def replay(task: ToolTask, calls: list[Call] | tuple[Call, ...]) -> tuple[Database, list[str]]:
    """The database after ``calls`` from the initial state, and the errors of the calls that failed."""
    db, failures = task.initial(), []
    for index, call in enumerate(calls):
        result = run_call(db, call)
        if "error" in result:
            failures.append(f"call {index} {call.name}: {result['message']}")
    return db, failures


# -- task params ------------------------------------------------------------------------------


def task_params(
    instruction: str, tools: list[str], initial: Database, goal: Database, solution: list[Call], max_turns: int
) -> dict[str, Any]:
    return {
        "instruction": instruction,
        "tools": list(tools),
        "initial": initial,
        "goal": goal,
        "solution": [c.plain() for c in solution],
        "max_turns": max_turns,
    }


def parse_task(params: dict[str, Any]) -> ToolTask:
    """Task params -> task, with ``EnvironmentError_`` naming the first bad field."""
    try:
        key = json.dumps(params, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise EnvironmentError_(f"toolcall task params are not plain JSON: {err}") from None
    return _cached_task(key)


@lru_cache(maxsize=4096)
def _cached_task(params_json: str) -> ToolTask:
    params = json.loads(params_json)
    instruction, tools, solution, max_turns = (params.get(k) for k in ("instruction", "tools", "solution", "max_turns"))
    if not isinstance(instruction, str) or not instruction.strip() or len(instruction) > MAX_INSTRUCTION_CHARS:
        raise EnvironmentError_(
            f"toolcall task instruction must be a non-empty string of at most {MAX_INSTRUCTION_CHARS} chars"
        )
    if not isinstance(tools, list) or not tools or not all(t in TOOLS for t in tools) or len(set(tools)) != len(tools):
        raise EnvironmentError_(
            f"toolcall task tools must be a non-empty list of distinct names among {list(TOOLS)}, "
            f"got {repr(tools)[:120]}"
        )
    for field in ("initial", "goal"):
        problems = database_problems(params.get(field), field)
        if problems:
            raise EnvironmentError_(f"toolcall task {field} state: {'; '.join(problems[:3])}")
    if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
        raise EnvironmentError_(f"toolcall task max_turns must be an int in [1, {MAX_TURNS_CAP}], got {max_turns!r}")
    if not isinstance(solution, list) or len(solution) > max_turns:
        raise EnvironmentError_(
            f"toolcall task solution must be a list of at most max_turns calls, got {repr(solution)[:120]}"
        )
    calls = []
    for index, plain in enumerate(solution):
        call = read_call(json.dumps(plain), tuple(tools))
        if not isinstance(call, Call):
            raise EnvironmentError_(f"toolcall task solution call {index}: {call['message']}")
        calls.append(call)
    task = ToolTask(instruction, tuple(tools), json.dumps(params["initial"]), params["goal"], tuple(calls), max_turns)
    if calls:
        final, failures = replay(task, calls)
        if failures:
            raise EnvironmentError_(f"toolcall task solution fails: {failures[0]}")
        if final != task.goal:
            raise EnvironmentError_("toolcall task solution does not reach the goal state")
    return task


# -- the turns the expert and the demonstrations write ------------------------------------


def call_turn(index: int, call: Call, quote: str = "") -> str:
    # The thought says the argument values before the call writes them. In the call's JSON a
    # value's first word follows a quote and is another token than in the request (`Ben` for
    # ` Ben`), so a tiny model cannot find the next word by looking its own token up there: it
    # copied the first name and guessed the surname. In the thought both words are the
    # request's own tokens, and the call copies the thought's last words.
    values = " ".join(str(value) for value in call.arguments.values())
    said = f"{quote} " if quote else ""
    return f"{tags.think(f'step {index + 1} {said}{call.name} {values}'.rstrip())} {tags.tool_call(call.text())}"


def request_quotes(instruction: str, solution: Sequence[Call]) -> list[str]:
    """Per call of ``solution``, the words of a generated request it carries out ("" for a lookup).

    A thought that first repeats those words (``i am Maya Khan .``, ``then buy plate , quantity
    3 .``) makes every value the call needs the word that follows its own last word somewhere in
    the request: one look-up by the previous token, the copy a tiny model learns first. Without
    it the model had to find "the product after buy" on its own and wrote the product it had
    seen most. A request that is not in the generator's form (a loaded dataset's) gets no quotes.
    """
    quotes = [""] * len(solution)
    greeting, _, rest = instruction.partition(" . ")
    clauses = [f"{clause} ." for clause in rest.removesuffix(" .").split(" . ")] if rest else []
    writes = [index for index, call in enumerate(solution) if TOOLS[call.name].writes]
    if not greeting.startswith("i am ") or len(clauses) != len(writes) or not solution:
        return quotes
    if solution[0].name == "find_user":
        quotes[0] = f"{greeting} ."
    for index, clause in zip(writes, clauses, strict=True):
        quotes[index] = clause
    return quotes


def answer_turn() -> str:
    return f"{tags.think('the request is done')} {tags.answer('done')}"


def prompt_text(task: ToolTask) -> str:
    tool_lines = "\n".join(signature(TOOLS[name]) for name in task.tools)
    return f"{INSTRUCTION}\ntools :\n{tool_lines}\nrequest : {task.instruction}"


class ToolCallEnvironment(TurnEnvironment):
    name = NAME
    stop_strings = tags.TOOL_CALL_STOP_STRINGS
    special_tokens = tags.TOOL_CALL_TAGS
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._tool_task: ToolTask | None = None
        self._db: Database = {}
        #: The calls that succeeded in this episode, in order; they rebuild the database.
        self._calls: list[Call] = []

    @property
    def task(self) -> ToolTask:
        return self._started(self._tool_task)

    @property
    def database(self) -> Database:
        """A copy of the current database."""
        return copy_database(self._db)

    def reset(self, task: TaskSpec) -> str:
        self._start(task)
        return prompt_text(self.task)

    def score(self) -> float:
        """The share of the solution's calls made so far (the reward once the episode is over)."""
        if self._done:
            return self._reward
        return self.steps_done() / (len(self.task.solution) + 1)

    def expert_action(self) -> str:
        """The solution's next call not made yet, or the reply when all are made or one turn is left."""
        solution, done = self.task.solution, self.steps_done()
        if done >= len(solution) or self.turns_left <= 1:
            return answer_turn()
        return call_turn(done, solution[done], request_quotes(self.task.instruction, solution)[done])

    def steps_done(self) -> int:
        """How many leading calls of the solution this episode has made successfully."""
        made = set(self._calls)
        done = 0
        for call in self.task.solution:
            if call not in made:
                break
            done += 1
        return done

    def goal_reached(self) -> bool:
        return self._db == self.task.goal

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        self._tool_task = parse_task(task.params)
        self.max_turns, self._db, self._calls = self._tool_task.max_turns, self._tool_task.initial(), []

    def _act(self, action_text: str) -> str:
        parsed = tags.parse_action(action_text, tags.TOOL_CALL_ACTIONS)
        if parsed is not None and parsed.kind == "answer":
            self._finish()
            return ""
        if parsed is None:
            result = error("no_action", "write <tool_call> {...} </tool_call> or <answer> done </answer>")
        else:
            call = read_call(parsed.content, self.task.tools)
            result = call if isinstance(call, dict) else run_call(self._db, call)
            if not isinstance(call, dict) and "error" not in result:
                self._calls.append(call)
        if self._turn >= self.max_turns:
            self._finish()
        return tags.tool_response(json.dumps(result))

    def _finish(self) -> None:
        self._done = True
        self._reward = 1.0 if self.goal_reached() else 0.0

    def _own_state(self) -> dict[str, Any]:
        return {"calls": [c.plain() for c in self._calls]}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        plain_calls: Any = snapshot.get("calls")
        require(isinstance(plain_calls, list), "snapshot calls must be a list")
        require(len(plain_calls) <= turn, f"snapshot has {len(plain_calls)} calls after {turn} turns")
        for index, plain in enumerate(plain_calls):
            try:
                call = read_call(json.dumps(plain), self.task.tools)
            except (TypeError, ValueError):
                call = error("bad_call", "not JSON")
            if not isinstance(call, Call):
                raise EnvironmentError_(f"corrupt snapshot: snapshot call {index} is not a valid call")
            result = run_call(self._db, call)
            require("error" not in result, f"snapshot call {index} fails: {result.get('message')}")
            self._calls.append(call)
        if done:
            require(reward == (1.0 if self.goal_reached() else 0.0), "snapshot reward does not match its final state")


# -- generated tasks --------------------------------------------------------------------------

PRODUCTS: tuple[str, ...] = (
    "lamp",
    "mug",
    "kettle",
    "blanket",
    "pillow",
    "candle",
    "teapot",
    "towel",
    "vase",
    "clock",
    "rug",
    "plate",
)
#: How a customer says each cancellation reason.
REASON_PHRASES: dict[str, str] = dict(zip(REASONS, ("i no longer need it", "i ordered it by mistake"), strict=True))
#: Pending and delivered orders are what requests act on, so they are drawn more often.
STATUS_DRAW: tuple[str, ...] = ("pending", "pending", "delivered", "delivered", "shipped", "cancelled", "returned")
#: What the generated requests ask for; ``goal_kinds`` knob names a subset.
GOAL_KINDS: tuple[str, ...] = ("cancel", "return", "change", "buy")
MAX_GOALS = 3
MAX_ORDERS = 4
NUM_USERS = 3
NUM_PRODUCTS = 6


@dataclass(frozen=True)
class Goal:
    """One write the request asks for: its phrase in the request and the call that does it."""

    phrase: str
    call: Call
    #: The order the call acts on ("" for a purchase): the expert must look it up first.
    order_id: str


def _draw_database(rng: random.Random, max_orders: int) -> Database:
    products = {
        name: {"price": rng.randint(3, 60), "stock": rng.randint(0, 6)} for name in rng.sample(PRODUCTS, NUM_PRODUCTS)
    }
    names = rng.sample([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], NUM_USERS)
    users: dict[str, dict[str, Any]] = {
        f"u{i + 1}": {"name": name, "balance": rng.randint(10, 200), "orders": []} for i, name in enumerate(names)
    }
    owners = [user_id for user_id in users for _ in range(rng.randint(1, max_orders))]
    rng.shuffle(owners)
    orders: dict[str, dict[str, Any]] = {}
    for number, user_id in enumerate(owners, start=1):
        product = rng.choice(sorted(products))
        quantity = rng.randint(1, 3)
        order = {
            "user_id": user_id,
            "product": product,
            "quantity": quantity,
            "total": quantity * products[product]["price"],
            "status": rng.choice(STATUS_DRAW),
        }
        if order["status"] == "cancelled":
            order["reason"] = rng.choice(REASONS)
        orders[f"o{number}"] = order
        users[user_id]["orders"].append(f"o{number}")
    return {"users": users, "products": products, "orders": orders}


def _goal_candidates(
    rng: random.Random, db: Database, user_id: str, kinds: tuple[str, ...], used: set[str]
) -> list[Goal]:
    """The writes a request could ask for next in state ``db``; an order is named by its status
    and product, so only orders that those two pick out uniquely qualify."""
    user = db["users"][user_id]
    mine = [(oid, db["orders"][oid]) for oid in user["orders"]]
    candidates = []
    for order_id, order in mine:
        product, status = order["product"], order["status"]
        if product in used or sum(o["product"] == product and o["status"] == status for _, o in mine) != 1:
            continue
        if status == "pending" and "cancel" in kinds:
            reason = rng.choice(REASONS)
            phrase = f"cancel my pending {product} order , {REASON_PHRASES[reason]}"
            cancel = make_call("cancel_order", {"order_id": order_id, "reason": reason})
            candidates.append(Goal(phrase, cancel, order_id))
        if status == "pending" and "change" in kinds:
            quantity = rng.choice([q for q in range(1, 6) if q != order["quantity"]])
            phrase = f"change my pending {product} order to quantity {quantity}"
            change = make_call("change_quantity", {"order_id": order_id, "quantity": quantity})
            candidates.append(Goal(phrase, change, order_id))
        if status == "delivered" and "return" in kinds:
            phrase = f"return my delivered {product} order"
            candidates.append(Goal(phrase, make_call("return_order", {"order_id": order_id}), order_id))
    if "buy" in kinds:
        product = rng.choice(sorted(db["products"]))
        if product not in used:
            quantity = rng.randint(1, 3)
            purchase = make_call("place_order", {"user_id": user_id, "product": product, "quantity": quantity})
            candidates.append(Goal(f"buy {product} , quantity {quantity}", purchase, ""))
    return candidates


def _product_of(db: Database, goal: Goal) -> str:
    return db["orders"][goal.order_id]["product"] if goal.order_id else goal.call.arguments["product"]


def draw_task(
    rng: random.Random, goals: int, max_orders: int, kinds: tuple[str, ...], slack: int
) -> tuple[str, Database, Database, list[Call]] | None:
    """(instruction, initial, goal, solution) of a request with ``goals`` writes, or ``None`` when
    the draw cannot make one (the caller draws again)."""
    initial = _draw_database(rng, max_orders)
    user_id = rng.choice(sorted(initial["users"]))
    db, chosen, used = copy_database(initial), [], set[str]()
    for _ in range(goals):
        candidates = _goal_candidates(rng, db, user_id, kinds, used)
        if not candidates:
            return None
        goal = rng.choice(candidates)
        if "error" in run_call(db, goal.call):
            return None
        chosen.append(goal)
        used.add(_product_of(db, goal))
    name = initial["users"][user_id]["name"]
    solution = [make_call("find_user", {"name": name})]
    targets = {g.order_id for g in chosen if g.order_id}
    for order_id in initial["users"][user_id]["orders"]:
        if not targets:
            break
        solution.append(make_call("get_order", {"order_id": order_id}))
        targets.discard(order_id)
    solution += [g.call for g in chosen]
    if len(solution) + 1 > MAX_TURNS_CAP:
        return None
    instruction = f"i am {name} . " + " . then ".join(g.phrase for g in chosen) + " ."
    return instruction, initial, db, solution


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    min_goals: int = 1,
    max_goals: int = 2,
    max_orders: int = 3,
    goal_kinds: tuple[str, ...] | list[str] = GOAL_KINDS,
    slack: int = 1,
    train_file: str = "",
    heldout_file: str = "",
) -> list[TaskSpec]:
    """``count`` distinct requests of ``split``.

    Difficulty: ``goals`` writes per request (``min_goals``-``max_goals``, up to 3, of
    ``goal_kinds``), ``max_orders`` orders per customer (the orders the expert may have to look
    up before it finds the one a request names), and a turn cap of the solution's calls plus the
    reply plus ``slack``. A request's split is decided by a hash of its text and its database.

    With ``train_file`` and ``heldout_file`` (JSONL in the task format, see ``load_tasks``) the
    tasks come from those files instead and the other knobs do not apply.
    """
    check_split(split)
    if train_file or heldout_file:
        return dataset_tasks(split, count, seed, train_file=train_file, heldout_file=heldout_file)
    kinds = tuple(goal_kinds)
    if not 1 <= min_goals <= max_goals <= MAX_GOALS:
        raise ValueError(f"need 1 <= min_goals <= max_goals <= {MAX_GOALS}, got {min_goals}, {max_goals}")
    if not 1 <= max_orders <= MAX_ORDERS:
        raise ValueError(f"max_orders must be in [1, {MAX_ORDERS}], got {max_orders}")
    if not kinds or set(kinds) - set(GOAL_KINDS):
        raise ValueError(f"goal_kinds must be a non-empty subset of {list(GOAL_KINDS)}, got {list(kinds)}")
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")

    def propose(rng: random.Random) -> Proposal | None:
        drawn = draw_task(rng, rng.randint(min_goals, max_goals), max_orders, kinds, slack)
        if drawn is None:
            return None
        instruction, initial, goal, solution = drawn
        max_turns = min(MAX_TURNS_CAP, len(solution) + 1 + slack)
        description = instruction + json.dumps(initial, sort_keys=True)
        return description, lambda: task_params(instruction, list(TOOLS), initial, goal, solution, max_turns)

    return distinct_tasks(NAME, split, count, seed, propose, attempts_per_task=50)


# -- real data: JSONL in the task format ------------------------------------------------------


@dataclass(frozen=True)
class DatasetTask:
    line: int
    params: dict[str, Any]

    @property
    def key(self) -> str:
        """What identifies the task across files: its request and its initial state."""
        return self.params["instruction"] + json.dumps(self.params["initial"], sort_keys=True)


def load_tasks(path: str | os.PathLike[str], slack: int = 1) -> list[DatasetTask]:
    """Tasks of a JSONL file, one object a line: ``instruction`` (string), ``tools`` (names of the
    store's functions the task may use), ``initial`` and ``goal`` (databases), and optionally
    ``solution`` (a list of ``{"name", "arguments"}`` calls that reaches the goal) and
    ``max_turns`` (default: the solution's calls + 1 + ``slack``, or the cap without a solution).
    A bad line raises ``EnvironmentError_`` naming the file and the line."""
    path = Path(path)
    tasks = []
    for number, record in json_lines(path):
        unknown = sorted(set(record) - {"instruction", "tools", "initial", "goal", "solution", "max_turns"})
        if unknown:
            raise EnvironmentError_(f"{path}:{number}: unknown fields {unknown}")
        for field in ("instruction", "tools", "initial", "goal"):
            if field not in record:
                raise EnvironmentError_(f"{path}:{number}: missing field {field!r}")
        solution, instruction = record.get("solution", []), record["instruction"]
        default_turns = MAX_TURNS_CAP
        if isinstance(solution, list) and solution:
            default_turns = min(MAX_TURNS_CAP, len(solution) + 1 + slack)
        params = {
            "instruction": " ".join(instruction.split()) if isinstance(instruction, str) else instruction,
            "tools": record["tools"],
            "initial": record["initial"],
            "goal": record["goal"],
            "solution": solution,
            "max_turns": record.get("max_turns", default_turns),
        }
        try:
            parse_task(params)
        except EnvironmentError_ as err:
            raise EnvironmentError_(f"{path}:{number}: {err}") from None
        tasks.append(DatasetTask(number, params))
    return tasks


def dataset_tasks(split: str, count: int, seed: int, *, train_file: str, heldout_file: str) -> list[TaskSpec]:
    """``count`` tasks sampled from the split's own file (``datafiles.sample_split``); one file
    for both splits divides it by a hash of each task."""
    picked = sample_split(NAME, split, count, seed, (train_file, heldout_file), load_tasks, lambda t: t.key)
    return [
        TaskSpec(env=NAME, task_id=f"{NAME}-{split}-{hashlib.sha256(t.key.encode()).hexdigest()[:16]}", params=t.params)
        for t in picked
    ]
