"""BFCL multi-turn: the Berkeley Function Calling Leaderboard's multi-turn base tasks, run
against its own executable API classes and judged as its checker judges them (registered as
``bfcl``; the data and classes come from the ``bfcl-eval`` package, see ``environments.bfcl_data``).

An episode is one conversation. The prompt lists the functions of the classes the task involves
(BFCL's own function documents) and the user's first message; the policy calls one function per
turn in Qwen3's native form, as in ``toolcall``, and ends the user's turn with a reply::

    <think> ... </think> <tool_call> {"name": "cd", "arguments": {"folder": "document"}} </tool_call>
    <tool_response> {"current_working_directory": "document"} </tool_response>
    ...
    <think> ... </think> <answer> done </answer>
    user : Perform a detailed search using grep ...

Each call runs against fresh instances of the real API classes, loaded with the task's initial
scenario; the observation is the call's result as BFCL's executor writes it (a dict as JSON,
anything else as ``str``, an exception as ``Error during execution: ...``), or the structured
error of ``toolcall`` for a call that cannot run (``invalid_json``, ``bad_call``,
``unknown_function``, ``invalid_arguments``, ...). After the reply to the last user turn the
episode ends.

Success is BFCL's multi-turn check. At the end of every user turn whose ground truth has calls:
the policy made at least one call in that turn; every public attribute of every API instance
equals the one of the instances that ran the ground-truth calls of all turns so far; and every
ground-truth result of the turn is among the results of the policy's calls so far (as a
multiset, order free). A user turn whose ground truth is empty is not checked. The episode ends
at the first failed check, with reward 0; reward 1 when every turn passes. The turn cap ending
the episode before the last reply is BFCL's forced termination: reward 0.

Arguments are not checked against the function documents, as BFCL does not check them: a call
with a missing, unexpected or mistyped argument runs, and fails (or not) inside the API. The one
difference from BFCL is on purpose: the few arguments that set the work of one call
(``COST_LIMITS``: the digits of a logarithm, an exponent) are bounded, so that a policy cannot
stall an actor; no ground-truth call comes near the bounds.
Tasks are ``{"entry_id": "multi_turn_base_<n>", "max_turns": int}``; the data is read from the
installed package. Without it, ``reset`` and ``make_tasks`` raise an error naming the fix.
"""

from __future__ import annotations

import ast
import decimal
import inspect
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from protocol import TaskSpec

from . import tags
from .argschema import Schema
from .base import EnvironmentError_
from .bfcl_data import BfclEntry, function_docs, load_entries, new_instances, public_methods
from .snapshots import require
from .splits import check_split, split_of_content
from .toolcall import Call, error, make_call, parse_call
from .turns import TurnEnvironment

NAME = "bfcl"
#: BFCL lets a model take 20 steps per user turn; an episode here shares one budget of actions.
MAX_TURNS_CAP = 60
#: Longer than any ground-truth call (255 characters) with room for a file's text.
MAX_CALL_CHARS = 4000
INSTRUCTION = (
    "you are an assistant with tools . call one tool per turn as "
    '<tool_call> {"name": tool , "arguments": {...}} </tool_call> ; when the user\'s request is '
    "done , reply to the user in <answer> ... </answer> . the user may then ask for more ."
)
#: (class, function, argument) -> bound on the argument's magnitude, for arguments whose value
#: sets the work of one call: the digits of a logarithm or square root, an integer power's size.
COST_LIMITS: dict[tuple[str, str, str], int] = {
    ("MathAPI", "logarithm", "precision"): 1000,
    ("MathAPI", "square_root", "precision"): 1000,
    ("MathAPI", "power", "exponent"): 10_000,
}
EXECUTION_ERROR_PREFIX = "Error during execution: "

Instances = dict[str, Any]


# -- running calls as BFCL's executor does --------------------------------------------------


def result_text(value: Any) -> str:
    """A call's result as BFCL's executor records it: a string as is, a dict as JSON (``str``
    when it is not JSON-able), anything else as ``str``."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


@contextmanager
def _numeric_context_kept() -> Iterator[None]:
    """BFCL's math functions set the process-wide decimal and mpmath precisions; keep both as
    they were, so a call changes nothing outside its instances."""
    mpmath = sys.modules.get("mpmath")
    precision = mpmath.mp.prec if mpmath is not None else None
    try:
        with decimal.localcontext():
            yield
    finally:
        if mpmath is not None:
            mpmath.mp.prec = precision


def execute(instances: Instances, owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Run one call on ``instances[owner]`` and return its result text; any exception the API
    raises becomes BFCL's error text (the call may have changed state before raising, as in BFCL)."""
    try:
        # The text is made under the call's precision too: an mpmath number prints with it.
        with _numeric_context_kept():
            return result_text(getattr(instances[owner], name)(*args, **kwargs))
    except Exception as err:  # noqa: BLE001 - the API classes raise whatever their code raises; BFCL records it
        return f"{EXECUTION_ERROR_PREFIX}{err}"


def method_owners(classes: tuple[str, ...]) -> dict[str, str]:
    """Function name -> the class whose instance runs it: BFCL maps every public method of each
    involved class in order, so a later class wins a name two classes share."""
    owners: dict[str, str] = {}
    for class_name in classes:
        for name in public_methods(class_name):
            owners[name] = class_name
    return owners


# -- BFCL's multi-turn check -----------------------------------------------------------------


def state_differences(model: Instances, truth: Instances) -> list[str]:
    """``class.attribute`` for every public attribute of a ground-truth instance that the
    policy's instance of the same class does not equal."""
    missing = object()
    return [
        f"{class_name}.{attribute}"
        for class_name, instance in truth.items()
        for attribute, value in vars(instance).items()
        if not attribute.startswith("_") and getattr(model[class_name], attribute, missing) != value
    ]


def missing_results(expected: tuple[str, ...] | list[str], produced: list[str]) -> list[str]:
    """The results of ``expected`` that ``produced`` lacks, counting repeats (order is free)."""
    available = Counter(produced)
    missing = []
    for result in expected:
        if available[result] > 0:
            available[result] -= 1
        else:
            missing.append(result)
    return missing


def turn_failure(
    turn: int,
    truth_calls: int,
    calls_made: int,
    model: Instances,
    truth: Instances,
    truth_results: tuple[str, ...],
    produced: list[str],
) -> str:
    """Why user turn ``turn`` fails BFCL's check, or ``""`` when it passes. ``produced`` holds the
    results of all the policy's calls so far; ``truth_results`` those of the turn's ground truth."""
    if truth_calls == 0:
        return ""
    if calls_made == 0:
        return f"turn {turn}: no function call"
    differences = state_differences(model, truth)
    if differences:
        return f"turn {turn}: state differs from the ground truth's in {', '.join(differences[:5])}"
    missing = missing_results(truth_results, produced)
    if missing:
        return f"turn {turn}: results lack {len(missing)} of the ground truth's, first {missing[0][:120]!r}"
    return ""


# -- the ground truth -------------------------------------------------------------------------


def parse_truth_call(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``"name(a, b=1)"`` -> (name, positional args, keyword args); the values are Python literals."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise EnvironmentError_(f"ground-truth call {text[:120]!r} is not Python: {err.msg}") from None
    match node:
        case ast.Call(func=ast.Name(id=name), args=args, keywords=keywords) if all(k.arg for k in keywords):
            try:
                values = tuple(ast.literal_eval(arg) for arg in args)
                named = {k.arg: ast.literal_eval(k.value) for k in keywords if k.arg is not None}
            except ValueError as err:
                raise EnvironmentError_(f"ground-truth call {text[:120]!r} has a non-literal argument: {err}") from None
            return name, values, named
        case _:
            raise EnvironmentError_(f"ground-truth call {text[:120]!r} is not a call of a function by name")


def named_arguments(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call by parameter name, as a policy's JSON call gives them."""
    try:
        bound = inspect.signature(function).bind(*args, **kwargs)
    except TypeError as err:
        raise EnvironmentError_(f"arguments do not fit {function.__name__}: {err}") from None
    return dict(bound.arguments)


@dataclass(frozen=True)
class GroundTruth:
    #: Per user turn, the ground-truth calls as a policy writes them.
    calls: tuple[tuple[Call, ...], ...]
    #: Per user turn, the results of those calls.
    results: tuple[tuple[str, ...], ...]
    #: Per user turn, the instances after the ground truth of that turn and all before it.
    states: tuple[Instances, ...]


@lru_cache(maxsize=256)
def ground_truth(entry_id: str) -> GroundTruth:
    """Run the entry's ground-truth calls, as BFCL's checker does, on their own instances."""
    entry = _entry(entry_id)
    owners = method_owners(entry.involved_classes)
    instances = new_instances(entry)
    calls, results, states = [], [], []
    for turn, texts in enumerate(entry.ground_truth):
        turn_calls, turn_results = [], []
        for text in texts:
            name, args, kwargs = parse_truth_call(text)
            if name not in owners:
                raise EnvironmentError_(f"{entry_id} turn {turn}: ground truth calls unknown function {name!r}")
            arguments = named_arguments(getattr(instances[owners[name]], name), args, kwargs)
            turn_calls.append(make_call(name, arguments))
            turn_results.append(execute(instances, owners[name], name, args, kwargs))
        calls.append(tuple(turn_calls))
        results.append(tuple(turn_results))
        states.append(deepcopy(instances))
    return GroundTruth(tuple(calls), tuple(results), tuple(states))


def _entry(entry_id: str) -> BfclEntry:
    entry = load_entries().get(entry_id)
    if entry is None:
        raise EnvironmentError_(f"no BFCL multi-turn base entry {entry_id!r}")
    return entry


# -- the functions a task offers --------------------------------------------------------------


def argument_schema(limits: dict[str, int]) -> Schema:
    """What is checked of a call's arguments before it runs: only the bounds of ``limits``. BFCL
    runs whatever arguments a call has, and so does this environment: a missing, unexpected or
    mistyped argument fails (or not) inside the API, as it would there."""
    properties = {argument: {"minimum": -limit, "maximum": limit} for argument, limit in limits.items()}
    return {"type": "object", "properties": properties}


@dataclass(frozen=True)
class Toolset:
    #: The function documents shown to the policy, one per callable name.
    docs: tuple[dict[str, Any], ...]
    #: Function name -> JSON Schema of its arguments.
    schemas: dict[str, Schema]
    #: Function name -> the class that runs it.
    owners: dict[str, str]


@lru_cache(maxsize=64)
def toolset(classes: tuple[str, ...]) -> Toolset:
    """The functions of ``classes``: each documented function that BFCL would run, documented
    by the class that runs it."""
    owners = method_owners(classes)
    docs, schemas = [], {}
    for class_name in classes:
        for doc in function_docs(class_name):
            name = doc["name"]
            if owners.get(name) != class_name or name in schemas:
                continue
            limits = {
                arg: bound
                for (owner, function, arg), bound in COST_LIMITS.items()
                if (owner, function) == (class_name, name)
            }
            docs.append(doc)
            schemas[name] = argument_schema(limits)
    return Toolset(tuple(docs), schemas, {name: owners[name] for name in schemas})


# -- the turns the expert writes and the prompt -----------------------------------------------


def call_turn(call: Call) -> str:
    return f"{tags.think(f'call {call.name}')} {tags.tool_call(call.text())}"


def reply_turn() -> str:
    return f"{tags.think('the request is done')} {tags.answer('done')}"


def user_text(message: str) -> str:
    return f"\nuser : {message}\n"


def prompt_text(entry: BfclEntry, tools: Toolset) -> str:
    lines = "\n".join(json.dumps(doc) for doc in tools.docs)
    return f"{INSTRUCTION}\ntools :\n{lines}{user_text(entry.user_turns[0])}"


# -- task params ------------------------------------------------------------------------------


def task_params(entry_id: str, max_turns: int) -> dict[str, Any]:
    return {"entry_id": entry_id, "max_turns": max_turns}


def read_task(params: dict[str, Any]) -> tuple[BfclEntry, int]:
    entry_id, max_turns = params.get("entry_id"), params.get("max_turns")
    if set(params) != {"entry_id", "max_turns"}:
        raise EnvironmentError_(f"bfcl task params must be exactly entry_id and max_turns, got {sorted(params)}")
    if not isinstance(entry_id, str):
        raise EnvironmentError_(f"bfcl task entry_id must be a string, got {entry_id!r}")
    if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
        raise EnvironmentError_(f"bfcl task max_turns must be an int in [1, {MAX_TURNS_CAP}], got {max_turns!r}")
    return _entry(entry_id), max_turns


class BfclEnvironment(TurnEnvironment):
    name = NAME
    stop_strings = tags.TOOL_CALL_STOP_STRINGS
    special_tokens = tags.TOOL_CALL_TAGS
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._entry: BfclEntry | None = None
        self._tools = Toolset((), {}, {})
        self._truth = GroundTruth((), (), ())
        self._instances: Instances = {}
        #: Per user turn so far, the calls that ran (including those whose API raised); they
        #: rebuild the instances.
        self._calls: list[list[Call]] = []
        #: The results of all those calls, in order.
        self._results: list[str] = []
        #: User turns ended by a reply (the last one may have failed the check).
        self._replies = 0
        self._failure = ""

    @property
    def entry(self) -> BfclEntry:
        return self._started(self._entry)

    @property
    def failure(self) -> str:
        """Why the episode failed BFCL's check (``""`` while it has not)."""
        return self._failure

    @property
    def user_turn(self) -> int:
        return len(self._calls) - 1

    def reset(self, task: TaskSpec) -> str:
        self._start(task)
        return prompt_text(self.entry, self._tools)

    def score(self) -> float:
        """The share of user turns passed, plus the current turn's share of ground-truth calls made."""
        if self._done:
            return self._reward
        truth = self._truth.calls[self.user_turn]
        progress = self._solution_calls_made() / (len(truth) + 1)
        return (self._replies + progress) / len(self.entry.user_turns)

    def expert_action(self) -> str:
        """The current user turn's next ground-truth call, or the reply once they are all made,
        once the episode strays from them, or when one turn is left."""
        truth, made = self._truth.calls[self.user_turn], self._solution_calls_made()
        if made < len(self._calls[-1]) or made >= len(truth) or self.turns_left <= 1:
            return reply_turn()
        return call_turn(truth[made])

    def _solution_calls_made(self) -> int:
        """How many leading calls of this user turn match its ground truth."""
        made = 0
        # The calls made so far may be fewer or more than the ground truth's: compare the overlap.
        for call, truth in zip(self._calls[-1], self._truth.calls[self.user_turn], strict=False):
            if call != truth:
                break
            made += 1
        return made

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        entry, max_turns = read_task(task.params)
        self._entry, self.max_turns = entry, max_turns
        self._tools = toolset(entry.involved_classes)
        self._truth = ground_truth(entry.entry_id)
        self._instances = new_instances(entry)
        self._calls, self._results, self._replies, self._failure = [[]], [], 0, ""

    def _act(self, action_text: str) -> str:
        parsed = tags.parse_action(action_text, tags.TOOL_CALL_ACTIONS, keep_spacing=True)
        if parsed is not None and parsed.kind == "answer":
            return self._end_user_turn()
        if parsed is None:
            return tags.tool_response(
                json.dumps(error("no_action", "write <tool_call> {...} </tool_call> or <answer> reply </answer>"))
            )
        call = parse_call(parsed.content, self._tools.schemas, MAX_CALL_CHARS)
        if isinstance(call, dict):
            return tags.tool_response(json.dumps(call))
        return tags.tool_response(self._run(call))

    def _run(self, call: Call) -> str:
        result = execute(self._instances, self._tools.owners[call.name], call.name, (), call.arguments)
        self._calls[-1].append(call)
        self._results.append(result)
        return result

    def _end_user_turn(self) -> str:
        """Judge the user turn the policy has just replied to; the next user message, or the end."""
        turn = self.user_turn
        self._replies += 1
        self._failure = turn_failure(
            turn,
            len(self._truth.calls[turn]),
            len(self._calls[turn]),
            self._instances,
            self._truth.states[turn],
            self._truth.results[turn],
            self._results,
        )
        if self._failure or turn + 1 == len(self.entry.user_turns):
            self._done = True
            self._reward = 0.0 if self._failure else 1.0
            return ""
        self._calls.append([])
        return user_text(self.entry.user_turns[turn + 1])

    def _own_state(self) -> dict[str, Any]:
        return {"calls": [[call.plain() for call in turn] for turn in self._calls], "replies": self._replies}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        plain_turns: Any = snapshot.get("calls")
        replies: Any = snapshot.get("replies")
        require(
            isinstance(plain_turns, list) and 1 <= len(plain_turns) <= len(self.entry.user_turns),
            "snapshot calls must hold a list per user turn reached",
        )
        require(all(isinstance(t, list) for t in plain_turns), "snapshot calls must hold a list per user turn reached")
        require(
            type(replies) is int and replies in (len(plain_turns) - 1, len(plain_turns)),
            f"snapshot replies {replies!r} do not fit its calls",
        )
        require(sum(map(len, plain_turns)) + replies <= turn, f"snapshot has more calls and replies than {turn} turns")
        # Replayed with the live methods: the replies judge their turns again and open the next ones.
        for index, plain_calls in enumerate(plain_turns):
            require(not self._done, f"snapshot goes on after user turn {index - 1}, which ended the episode")
            for plain in plain_calls:
                try:
                    call = parse_call(json.dumps(plain), self._tools.schemas, MAX_CALL_CHARS)
                except (TypeError, ValueError):
                    call = error("bad_call", "not JSON")
                if not isinstance(call, Call):
                    raise EnvironmentError_(f"corrupt snapshot: a call of user turn {index} is not a valid call")
                self._run(call)
            if index < replies:
                self._end_user_turn()
        require(self._done or len(self._calls) == len(plain_turns), "snapshot replies to its last turn without an end")
        if self._done:
            require(done and reward == self._reward, "snapshot done and reward do not match its replies")
        else:
            require(not done or turn >= self.max_turns, "snapshot is done before its last reply or the turn cap")


# -- tasks ------------------------------------------------------------------------------------


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    min_calls: int = 0,
    max_calls: int = 100,
    max_user_turns: int = 10,
    slack: int = 4,
) -> list[TaskSpec]:
    """``count`` BFCL multi-turn base entries of ``split``, sampled without replacement.

    An entry's split is decided by a hash of its id, so the splits never share one. Difficulty:
    the number of ground-truth calls (``min_calls``-``max_calls``) and of user turns (at most
    ``max_user_turns``). The turn cap is the ground truth's calls plus a reply per user turn
    plus ``slack``.
    """
    check_split(split)
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    eligible = []
    for entry_id, entry in sorted(load_entries().items()):
        calls = sum(map(len, entry.ground_truth))
        turns = len(entry.user_turns)
        if split_of_content(entry_id) == split and min_calls <= calls <= max_calls and turns <= max_user_turns:
            eligible.append(task_params(entry_id, min(MAX_TURNS_CAP, calls + turns + slack)))
    if count > len(eligible):
        raise ValueError(f"asked for {count} {split} BFCL tasks but only {len(eligible)} fit the difficulty knobs")
    picked = random.Random(f"{NAME}:{split}:{seed}").sample(eligible, count)
    return [TaskSpec(env=NAME, task_id=f"{NAME}-{params['entry_id']}", params=params) for params in picked]
