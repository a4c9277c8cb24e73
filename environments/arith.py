"""Word problems solved with a calculator tool (registered as ``math``).

A turn is a thought and then either a calculator call or the final answer::

    <think> step 1 boxes </think> <calculate> 4 * 12 </calculate>
    <information> 48 </information>
    <think> the answer is 33 </think> <answer> 33 </answer>

The calculator (``environments.calculator``) answers with the exact value (``48``, ``-3/4``)
or an error saying what is wrong; a final answer ends the episode with reward 1 when it
equals the exact answer as a rational (``2.5``, ``5/2`` and ``10/4`` all match 5/2). Anything
else costs a turn and gets an error observation.

A task is a problem in plain data, whether generated here or read from a GSM8K-format file::

    {"question": "Ana has 4 baskets with 12 apples in each basket . ...",
     "answer": "33",
     "steps": [{"template": "4 * 12", "kind": "boxes"}, {"template": "#0 - 15", "kind": "gives"}],
     "max_turns": 4}

``steps`` is a worked solution, one calculator call per step; ``#k`` stands for the value of
step k. The expert (and the score) follow it; generated problems also name each step's
phrase ``kind``, which is where the demonstrations' systematic mistakes attach.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from protocol import TaskSpec

from . import tags
from .base import EnvironmentError_
from .calculator import CalculatorError, evaluate, format_value, parse_number, parse_value
from .datafiles import json_lines, sample_split, string_field
from .kb import FIRST_NAMES
from .snapshots import require
from .splits import Proposal, check_split, distinct_tasks
from .turns import TurnEnvironment

NAME = "math"
MAX_TURNS_CAP = 8
#: A solution's steps all fit in the turn cap with the answer turn after them.
MAX_STEPS = MAX_TURNS_CAP - 1
MAX_QUESTION_CHARS = 2000
INSTRUCTION = (
    "solve the problem . calculate with <calculate> expression </calculate> , then <answer> number </answer> ."
)
PROMPT_PREFIX = "problem :"

NO_ACTION_OBSERVATION = tags.information("error : write a calculation or an answer")
NOT_A_NUMBER_OBSERVATION = tags.information("error : the answer must be a number such as 7 , -3/4 or 2.5")

_REFERENCE = re.compile(r"#(\d+)")


@dataclass(frozen=True)
class Step:
    #: The calculator expression, with ``#k`` for the value of step k.
    template: str
    #: The phrase the step comes from ("gives", "splits", ...); "" when unknown (real data).
    kind: str = ""


@dataclass(frozen=True)
class WordProblem:
    question: str
    answer: Fraction
    steps: tuple[Step, ...]
    #: Each step's exact value along the worked solution.
    values: tuple[Fraction, ...]
    max_turns: int

    def expression(self, index: int) -> str:
        """Step ``index``'s expression with the solution's own values filled in."""
        return resolve(self.steps[index].template, self.values)


def operand(value: Fraction) -> str:
    """A value as it is typed into an expression: parenthesised unless a plain whole number, so
    that substituting it never changes how the expression parses (``6 / (7/2)``)."""
    text = format_value(value)
    return text if value.denominator == 1 and value >= 0 else f"({text})"


def resolve(template: str, values: tuple[Fraction, ...] | list[Fraction]) -> str:
    """``template`` with every ``#k`` replaced by ``values[k]``."""
    return _REFERENCE.sub(lambda m: operand(values[int(m.group(1))]), template)


def task_params(question: str, answer: Fraction, steps: tuple[Step, ...], max_turns: int) -> dict[str, Any]:
    """The plain task params of a problem (inverse of ``parse_problem``)."""
    return {
        "question": question,
        "answer": format_value(answer),
        "steps": [{"template": s.template, "kind": s.kind} for s in steps],
        "max_turns": max_turns,
    }


def parse_problem(params: dict[str, Any]) -> WordProblem:
    """Task params -> problem, with ``EnvironmentError_`` naming the first bad field."""
    question, answer, steps, max_turns = (params.get(k) for k in ("question", "answer", "steps", "max_turns"))
    if not isinstance(question, str) or not question.strip() or len(question) > MAX_QUESTION_CHARS:
        raise EnvironmentError_(f"math task question must be a non-empty string of at most {MAX_QUESTION_CHARS} chars")
    if not isinstance(answer, str):
        raise EnvironmentError_(f"math task answer must be a string such as '33' or '-3/4', got {answer!r}")
    if not isinstance(steps, list) or len(steps) > MAX_STEPS or not all(_plain_step(s) for s in steps):
        raise EnvironmentError_(
            f"math task steps must be a list of at most {MAX_STEPS} {{'template': str, 'kind': str}}, "
            f"got {repr(steps)[:120]}"
        )
    if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
        raise EnvironmentError_(f"math task max_turns must be an int in [1, {MAX_TURNS_CAP}], got {max_turns!r}")
    key = tuple((s["template"], s["kind"]) for s in steps)
    return _cached_problem(question, answer, key, max_turns)


def _plain_step(step: Any) -> bool:
    return isinstance(step, dict) and isinstance(step.get("template"), str) and isinstance(step.get("kind"), str)


@lru_cache(maxsize=8192)
def _cached_problem(question: str, answer: str, steps: tuple[tuple[str, str], ...], max_turns: int) -> WordProblem:
    try:
        exact = parse_value(answer)
    except ValueError as err:
        raise EnvironmentError_(f"math task answer: {err}") from None
    values: list[Fraction] = []
    for index, (template, _) in enumerate(steps):
        shown = repr(template[:60])
        if any(int(ref) >= index for ref in _REFERENCE.findall(template)):
            raise EnvironmentError_(f"math task step {index} {shown} refers to a step that does not come before it")
        try:
            values.append(evaluate(resolve(template, values)))
        except CalculatorError as err:
            raise EnvironmentError_(f"math task step {index} {shown}: {err}") from None
    return WordProblem(question, exact, tuple(Step(t, k) for t, k in steps), tuple(values), max_turns)


# -- the turns the expert and the demonstrations write ------------------------------------


def calculate_turn(index: int, kind: str, expression: str) -> str:
    thought = f"step {index + 1} {kind or 'calculate'}"
    return f"{tags.think(thought)} {tags.calculate(expression)}"


def answer_turn(value: Fraction) -> str:
    text = format_value(value)
    return f"{tags.think(f'the answer is {text}')} {tags.answer(text)}"


class MathEnvironment(TurnEnvironment):
    name = NAME
    stop_strings = tags.CALCULATOR_STOP_STRINGS
    special_tokens = tags.CALCULATOR_TAGS
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._problem: WordProblem | None = None
        #: Every value the calculator has shown in this episode (canonical text).
        self._shown: set[str] = set()

    @property
    def problem(self) -> WordProblem:
        return self._started(self._problem)

    def reset(self, task: TaskSpec) -> str:
        self._start(task)
        return f"{INSTRUCTION}\n{PROMPT_PREFIX} {self.problem.question}"

    def score(self) -> float:
        """The share of the worked solution's steps whose values the calculator has shown."""
        if self._done:
            return self._reward
        return self.steps_done() / (len(self.problem.steps) + 1)

    def expert_action(self) -> str:
        """The next step of the worked solution, or the answer when all are shown or one turn is left."""
        problem, done = self.problem, self.steps_done()
        if done >= len(problem.steps) or self.turns_left <= 1:
            return answer_turn(problem.answer)
        return calculate_turn(done, problem.steps[done].kind, problem.expression(done))

    def steps_done(self) -> int:
        """How many leading steps of the worked solution have had their values shown."""
        done = 0
        for value in self.problem.values:
            if format_value(value) not in self._shown:
                break
            done += 1
        return done

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        self._problem = parse_problem(task.params)
        self.max_turns, self._shown = self._problem.max_turns, set()

    def _act(self, action_text: str) -> str:
        parsed = tags.parse_action(action_text, tags.CALCULATOR_ACTIONS)
        if parsed is None:
            return NO_ACTION_OBSERVATION
        if parsed.kind == "calculate":
            return self._calculate(parsed.content)
        number = parse_number(parsed.content)
        if number is None:
            return NOT_A_NUMBER_OBSERVATION
        self._done = True
        self._reward = 1.0 if number == self.problem.answer else 0.0
        return ""

    def _own_state(self) -> dict[str, Any]:
        return {"shown": sorted(self._shown)}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        shown: Any = snapshot.get("shown")
        require(
            isinstance(shown, list) and all(isinstance(v, str) for v in shown),
            "snapshot shown must be a list of strings",
        )
        require(len(shown) <= turn, f"snapshot shows {len(shown)} values after {turn} turns")
        for value in shown:
            try:
                parse_value(value)
            except ValueError as err:
                require(False, f"snapshot shown value: {err}")
        self._shown = set(shown)

    def _calculate(self, expression: str) -> str:
        try:
            value = format_value(evaluate(expression))
        except CalculatorError as err:
            return tags.information(f"error : {err}")
        self._shown.add(value)
        return tags.information(value)


# -- generated problems ---------------------------------------------------------------------

#: The operator of every phrase kind; combining kinds join two people's quantities.
KIND_OPERATORS: dict[str, str] = {
    "boxes": "*",
    "buys": "+",
    "gives": "-",
    "uses": "-",
    "times": "*",
    "splits": "/",
    "together": "+",
    "more": "-",
}
MAX_OPS = 6
MAX_QUANTITIES = 3
#: Values of generated problems stay small, so the policy copies short numbers.
MAX_VALUE = 2000


@dataclass(frozen=True)
class Item:
    noun: str
    container: str
    #: How the story refers to all of it ("the juice"); the noun itself when empty.
    mass: str = ""

    @property
    def countable(self) -> bool:
        """Counted items stay whole; measured ones (those with a ``mass`` name) may become fractions."""
        return not self.mass


ITEMS: tuple[Item, ...] = (
    Item("apples", "basket"),
    Item("pencils", "tin"),
    Item("stickers", "sheet"),
    Item("marbles", "bag"),
    Item("cookies", "jar"),
    Item("stamps", "album"),
    Item("shells", "bucket"),
    Item("cards", "pack"),
    Item("liters of juice", "bottle", mass="juice"),
    Item("kilograms of rice", "sack", mass="rice"),
)


@dataclass
class _Quantity:
    """One person's quantity as the story changes it."""

    person: str
    #: The quantity as an operand: a given number, or ``#k`` once step k has computed it.
    ref: str
    value: Fraction


class _ProblemBuilder:
    """Writes a story sentence by sentence and its worked solution step by step."""

    def __init__(self, rng: random.Random, item: Item) -> None:
        self.rng, self.item = rng, item
        self.sentences: list[str] = []
        self.steps: list[Step] = []
        self.values: list[Fraction] = []

    def _step(self, kind: str, left: str, right: str) -> str:
        template = f"{left} {KIND_OPERATORS[kind]} {right}"
        self.steps.append(Step(template, kind))
        self.values.append(evaluate(resolve(template, self.values)))
        return f"#{len(self.steps) - 1}"

    def start(self, person: str, boxed: bool) -> _Quantity:
        rng, item = self.rng, self.item
        if boxed:
            count, each = rng.randint(2, 9), rng.randint(2, 12)
            self.sentences.append(
                f"{person} has {count} {item.container}s with {each} {item.noun} in each {item.container} ."
            )
            ref = self._step("boxes", str(count), str(each))
            return _Quantity(person, ref, self.values[-1])
        amount = rng.randint(5, 40)
        self.sentences.append(f"{person} has {amount} {item.noun} .")
        return _Quantity(person, str(amount), Fraction(amount))

    def change(self, quantity: _Quantity, friend: str) -> None:
        rng, item, who, value = self.rng, self.item, quantity.person, quantity.value
        divisors = [d for d in range(2, 7) if not item.countable or value % d == 0]
        kinds = ["buys", "times"] + (["gives", "uses"] if value > 2 else []) + (["splits"] if divisors else [])
        kind = rng.choice(kinds)
        if kind == "buys":
            n = rng.randint(2, 30)
            self.sentences.append(f"{who} buys {n} more {item.noun} .")
        elif kind == "times":
            n = rng.randint(2, 4)
            self.sentences.append(f"{who} ends up with {n} times as many {item.noun} .")
        elif kind == "splits":
            n = rng.choice(divisors)
            self.sentences.append(
                f"{who} splits the {item.mass or item.noun} into {n} equal parts and keeps one part ."
            )
        else:
            n = rng.randint(1, min(30, int(value) - 1))
            self.sentences.append(
                f"{who} gives {n} {item.noun} to {friend} ." if kind == "gives" else f"{who} uses {n} {item.noun} ."
            )
        quantity.ref = self._step(kind, quantity.ref, str(n))
        quantity.value = self.values[-1]

    def ask(self, quantities: list[_Quantity]) -> None:
        """The closing question; with several people, the steps that combine their quantities."""
        noun = self.item.noun
        names = [q.person for q in quantities]
        if len(quantities) == 1:
            self.sentences.append(f"how many {noun} does {names[0]} have now ?")
            return
        first, second = quantities[0], quantities[1]
        if len(quantities) == 2 and first.value != second.value and self.rng.random() < 0.5:
            more, less = (first, second) if first.value > second.value else (second, first)
            self.sentences.append(f"how many more {noun} does {more.person} have than {less.person} ?")
            self._step("more", more.ref, less.ref)
            return
        total = self._step("together", first.ref, second.ref)
        for quantity in quantities[2:]:
            total = self._step("together", total, quantity.ref)
        self.sentences.append(
            f"how many {noun} do {', '.join(names[:-1]).replace(',', ' ,')} and {names[-1]} have together ?"
        )


def draw_problem(rng: random.Random, ops: int, quantities: int, slack: int) -> WordProblem | None:
    """A problem of ``ops`` calculator steps about ``quantities`` people, or ``None`` when the
    draw breaks a constraint (the caller draws again)."""
    item = rng.choice(ITEMS)
    *people, friend = rng.sample(FIRST_NAMES, quantities + 1)
    builder = _ProblemBuilder(rng, item)
    changes = [0] * quantities
    for _ in range(ops - (quantities - 1)):
        changes[rng.randrange(quantities)] += 1
    story = []
    for person, count in zip(people, changes, strict=True):
        boxed = count > 0 and rng.random() < 0.4
        quantity = builder.start(person, boxed)
        for _ in range(count - boxed):
            builder.change(quantity, friend)
        story.append(quantity)
    builder.ask(story)
    values = builder.values
    if len(set(values)) != len(values) or any(not 0 < v <= MAX_VALUE or v.denominator > 100 for v in values):
        return None
    question = " ".join(builder.sentences)
    return WordProblem(question, values[-1], tuple(builder.steps), tuple(values), min(MAX_TURNS_CAP, ops + 1 + slack))


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    min_ops: int = 1,
    max_ops: int = 4,
    min_quantities: int = 1,
    max_quantities: int = 2,
    slack: int = 1,
    train_file: str = "",
    heldout_file: str = "",
) -> list[TaskSpec]:
    """``count`` distinct problems of ``split``.

    Difficulty: ``ops`` calculator steps (each a given number or an earlier result combined
    with another) about ``quantities`` people whose quantities the question combines; the turn
    cap is ``ops + 1 + slack``. A problem's split is decided by a hash of its text, so train and
    held-out problems never coincide whatever the seeds.

    With ``train_file`` and ``heldout_file`` (GSM8K-format JSONL) the problems come from those
    files instead (see ``dataset_tasks``) and the other knobs but ``slack`` do not apply.
    """
    check_split(split)
    if train_file or heldout_file:
        return dataset_tasks(split, count, seed, train_file=train_file, heldout_file=heldout_file, slack=slack)
    if not 1 <= min_ops <= max_ops <= MAX_OPS:
        raise ValueError(f"need 1 <= min_ops <= max_ops <= {MAX_OPS}, got {min_ops}, {max_ops}")
    if not 1 <= min_quantities <= max_quantities <= MAX_QUANTITIES or min_quantities - 1 > max_ops:
        raise ValueError(
            f"need 1 <= min_quantities <= max_quantities <= {MAX_QUANTITIES} and min_quantities - 1 <= max_ops "
            f"(combining quantities takes steps), got {min_quantities}, {max_quantities}"
        )
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")

    def propose(rng: random.Random) -> Proposal | None:
        ops = rng.randint(max(min_ops, min_quantities - 1), max_ops)
        quantities = rng.randint(min_quantities, min(max_quantities, ops + 1))
        problem = draw_problem(rng, ops, quantities, slack)
        if problem is None:
            return None
        return problem.question, lambda: task_params(problem.question, problem.answer, problem.steps, problem.max_turns)

    return distinct_tasks(NAME, split, count, seed, propose, attempts_per_task=50)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- real data: GSM8K-format JSONL ------------------------------------------------------------

#: GSM8K's calculator annotations in a worked answer: "48/2 = <<48/2=24>>24 clips".
_ANNOTATION = re.compile(r"<<([^<>=]{1,200})=([^<>]{0,64})>>")


@dataclass(frozen=True)
class DatasetProblem:
    line: int
    question: str
    answer: Fraction
    #: The annotations the calculator accepts, in order: the expert's calculator calls.
    steps: tuple[Step, ...]


def load_gsm8k(path: str | os.PathLike[str]) -> list[DatasetProblem]:
    """Problems of a GSM8K-format JSONL file: ``question``, and ``answer`` whose worked solution
    ends in ``#### <number>``. A bad line raises ``EnvironmentError_`` naming the file and line."""
    path = Path(path)
    problems = []
    for number, record in json_lines(path):
        question = " ".join(string_field(path, number, record, "question").split())
        worked = string_field(path, number, record, "answer")
        solution, marker, final = worked.rpartition("####")
        if not marker:
            raise EnvironmentError_(f"{path}:{number}: field 'answer' must end with '#### <number>'")
        answer = parse_number(final.strip())
        if answer is None:
            raise EnvironmentError_(
                f"{path}:{number}: the final answer {final.strip()[:40]!r} after '####' is not a number"
            )
        if len(question) > MAX_QUESTION_CHARS:
            raise EnvironmentError_(f"{path}:{number}: the question is longer than {MAX_QUESTION_CHARS} characters")
        steps = tuple(Step(expression) for expression in _usable_annotations(solution))[:MAX_STEPS]
        problems.append(DatasetProblem(number, question, answer, steps))
    return problems


def _usable_annotations(solution: str) -> list[str]:
    usable = []
    for match in _ANNOTATION.finditer(solution):
        expression = " ".join(match.group(1).split())
        try:
            evaluate(expression)
        except CalculatorError:
            continue
        usable.append(expression)
    return usable


def dataset_tasks(
    split: str, count: int, seed: int, *, train_file: str, heldout_file: str, slack: int = 1
) -> list[TaskSpec]:
    """``count`` problems sampled from the split's own file (``datafiles.sample_split``); one
    file for both splits divides it by a hash of each question."""
    if slack < 0:
        raise ValueError(f"slack must be >= 0, got {slack}")
    picked = sample_split(NAME, split, count, seed, (train_file, heldout_file), load_gsm8k, lambda p: p.question)
    return [
        TaskSpec(
            env=NAME,
            task_id=f"{NAME}-{split}-{_digest(record.question)}",
            params=task_params(
                record.question, record.answer, record.steps, min(MAX_TURNS_CAP, len(record.steps) + 1 + slack)
            ),
        )
        for record in picked
    ]
