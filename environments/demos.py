"""Demonstrations for the supervised warm start, with systematic injected mistakes.

Why the mistakes: RL on these tasks mostly sharpens whatever the warm-started policy ranks
first. If the demos are right except for random noise, the greedy policy is already nearly
perfect and there is little left to learn. So demos go wrong *consistently in recognisable
contexts*: the warm-started policy then fails on whole families of prompts (all-fail groups)
and succeeds on others (all-pass groups), while a minority of correct demos in the same
contexts keeps the right action reachable by sampling, so RL can still fix it.

The mistakes ``MistakeProfile`` controls:

* multihop, relation confusion: when a hop asks for relation r and ``r -> r'`` is in
  ``relation_confusion``, the demo searches r' instead (with probability ``confusion_rate``)
  and follows the wrong entity to a wrong answer.
* multihop, premature answer: for a question of h hops, a share
  ``premature_answer_share[h]`` of start first-names (a fixed, hash-chosen subset, so the
  context is visible and the behaviour systematic) answers one hop too early, in a fraction
  ``premature_consistency`` of their demos.
* frozenlake / sokoban, local move confusion: when the right move is m, ``m -> m'`` is in
  ``grid_move_confusion`` and the local configuration is risky (a hole next to the player
  in FrozenLake, a box next to the player in Sokoban), the demo plays m' instead with
  probability ``grid_confusion_rate``; afterwards it continues expertly from wherever it is.
* math, operation confusion: a step of phrase kind k ("splits", "more") with ``k -> op`` in
  ``math_operation_confusion`` is calculated with operator op instead (with probability
  ``math_confusion_rate``), and the demo carries on with the wrong value to a wrong answer.
* math, premature answer: for a problem of s steps, a share ``math_premature_share[s]`` of
  first names (the problem's first word; hash-chosen, as for multihop) answers the value of
  step s - 1, in a fraction ``premature_consistency`` of their demos.
* toolcall, reason confusion: a cancellation whose reason r has ``r -> r'`` in
  ``toolcall_reason_confusion`` is made with reason r' (with probability
  ``toolcall_confusion_rate``), so the final state records the wrong reason.
* toolcall, premature reply: for a request of w writes, a share ``toolcall_premature_share[w]``
  of customers' first names replies "done" before the last write, in a fraction
  ``premature_consistency`` of their demos.
* webshop, option confusion: a wanted option value v with ``v -> v'`` in
  ``webshop_option_confusion`` is clicked as v' when the product offers v' (with probability
  ``webshop_confusion_rate``), and the demo buys with it.
* webshop, hasty purchase: for a hash-chosen share ``webshop_hasty_share`` of product types,
  the demo opens the first result of the wanted type and attributes and buys it at once,
  without checking its price or choosing options (in a fraction ``webshop_hasty_rate`` of
  their demos). Its thought is only ``open <id>``, without the price check of
  ``webshop.open_thought``.

``MistakeProfile.none()`` gives pure expert demos.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from fractions import Fraction

from protocol import TaskSpec

from . import arith, frozenlake, sokoban, toolcall, webshop
from .base import Environment
from .calculator import CalculatorError, evaluate
from .grid import DELTAS, GridEnvironment, move_turn, parse_move
from .multihop import MultihopEnvironment, answer_turn, search_turn
from .registry import make_env
from .storeapi import REASONS, TOOLS

#: An environment's entry goes up whenever the text of its demonstrations changes in a way no
#: recipe field captures; the embedded model's cache key includes it. toolcall 2: the thought
#: before a call says the call's argument values. toolcall 4: it first repeats the request's words
#: for that call (``toolcall.request_quotes``); 3 named a format tried and not adopted. webshop 3:
#: the thought before an option repeats the instruction's words for it (``webshop.option_thought``);
#: 1 and 2 named formats tried and not adopted. webshop 4: the thought before opening a product
#: checks the results' prices against the bound (``webshop.open_thought``).
DEMO_FORMAT_REVISIONS: dict[str, int] = {"toolcall": 4, "webshop": 4}


@dataclass(frozen=True)
class MistakeProfile:
    relation_confusion: tuple[tuple[str, str], ...] = (("manager", "mentor"),)
    confusion_rate: float = 0.85
    premature_answer_share: tuple[tuple[int, float], ...] = ((3, 0.5), (4, 0.75))
    premature_consistency: float = 0.9
    grid_move_confusion: tuple[tuple[str, str], ...] = (("Down", "Right"), ("Left", "Up"))
    grid_confusion_rate: float = 0.85
    math_operation_confusion: tuple[tuple[str, str], ...] = (("splits", "*"), ("more", "+"))
    math_confusion_rate: float = 0.85
    math_premature_share: tuple[tuple[int, float], ...] = ((3, 0.5), (4, 0.75))
    toolcall_reason_confusion: tuple[tuple[str, str], ...] = (("ordered by mistake", "no longer needed"),)
    toolcall_confusion_rate: float = 0.85
    toolcall_premature_share: tuple[tuple[int, float], ...] = ((1, 0.3), (2, 0.5), (3, 0.75))
    webshop_option_confusion: tuple[tuple[str, str], ...] = (
        ("navy", "blue"),
        ("black", "grey"),
        ("large", "x-large"),
        ("size 9", "size 10"),
        ("16 oz", "20 oz"),
    )
    webshop_confusion_rate: float = 0.85
    webshop_hasty_share: float = 0.65
    webshop_hasty_rate: float = 0.9
    _confusion: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _premature: dict[int, float] = field(init=False, compare=False, hash=False, repr=False)
    _grid: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _operation: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _math_premature: dict[int, float] = field(init=False, compare=False, hash=False, repr=False)
    _reason: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _toolcall_premature: dict[int, float] = field(init=False, compare=False, hash=False, repr=False)
    _option: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        rates = (
            "confusion_rate",
            "premature_consistency",
            "grid_confusion_rate",
            "math_confusion_rate",
            "toolcall_confusion_rate",
            "webshop_confusion_rate",
            "webshop_hasty_share",
            "webshop_hasty_rate",
        )
        for rate_name in rates:
            if not 0.0 <= getattr(self, rate_name) <= 1.0:
                raise ValueError(f"{rate_name} must be in [0, 1], got {getattr(self, rate_name)}")
        for share_name in ("premature_answer_share", "math_premature_share", "toolcall_premature_share"):
            if any(not 0.0 <= share <= 1.0 for _, share in getattr(self, share_name)):
                raise ValueError(f"{share_name} values must be in [0, 1], got {getattr(self, share_name)}")
        if any(a not in DELTAS or b not in DELTAS for a, b in self.grid_move_confusion):
            raise ValueError(f"grid_move_confusion must map moves among {list(DELTAS)}, got {self.grid_move_confusion}")
        operators = sorted(set(arith.KIND_OPERATORS.values()))
        if any(k not in arith.KIND_OPERATORS or op not in operators for k, op in self.math_operation_confusion):
            raise ValueError(
                f"math_operation_confusion must map phrase kinds among {list(arith.KIND_OPERATORS)} to operators "
                f"among {operators}, got {self.math_operation_confusion}"
            )
        if any(a not in REASONS or b not in REASONS for a, b in self.toolcall_reason_confusion):
            raise ValueError(
                f"toolcall_reason_confusion must map reasons among {list(REASONS)}, "
                f"got {self.toolcall_reason_confusion}"
            )
        object.__setattr__(self, "_confusion", dict(self.relation_confusion))
        object.__setattr__(self, "_premature", dict(self.premature_answer_share))
        object.__setattr__(self, "_grid", dict(self.grid_move_confusion))
        object.__setattr__(self, "_operation", dict(self.math_operation_confusion))
        object.__setattr__(self, "_math_premature", dict(self.math_premature_share))
        object.__setattr__(self, "_reason", dict(self.toolcall_reason_confusion))
        object.__setattr__(self, "_toolcall_premature", dict(self.toolcall_premature_share))
        object.__setattr__(self, "_option", dict(self.webshop_option_confusion))

    @classmethod
    def none(cls) -> MistakeProfile:
        return cls(
            relation_confusion=(),
            premature_answer_share=(),
            grid_move_confusion=(),
            math_operation_confusion=(),
            math_premature_share=(),
            toolcall_reason_confusion=(),
            toolcall_premature_share=(),
            webshop_option_confusion=(),
            webshop_hasty_share=0.0,
        )

    def confused_relation(self, relation: str) -> str | None:
        return self._confusion.get(relation)

    def answers_early(self, first_name: str, hops: int) -> bool:
        """Whether questions of ``hops`` hops starting at this first name are in the
        premature-answer family (deterministic, so the context decides, not the dice)."""
        return _in_family(first_name, hops, self._premature.get(hops, 0.0))

    def confused_move(self, move: str) -> str | None:
        return self._grid.get(move)

    def confused_operator(self, kind: str) -> str | None:
        return self._operation.get(kind)

    def answers_math_early(self, first_word: str, steps: int) -> bool:
        """Like ``answers_early``, for a math problem of ``steps`` steps opening with this word."""
        return _in_family(first_word, steps, self._math_premature.get(steps, 0.0))

    def confused_reason(self, reason: str) -> str | None:
        return self._reason.get(reason)

    def replies_early(self, first_name: str, writes: int) -> bool:
        """Like ``answers_early``, for a request of ``writes`` writes by a customer of this first name."""
        return _in_family(first_name, writes, self._toolcall_premature.get(writes, 0.0))

    def confused_option(self, value: str) -> str | None:
        return self._option.get(value)

    def buys_hastily(self, product_type: str) -> bool:
        """Whether demos for this product type are in the hasty-purchase family."""
        return _in_family(product_type, 0, self.webshop_hasty_share)


def _in_family(context: str, size: int, share: float) -> bool:
    digest = hashlib.sha256(f"premature:{context}:{size}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


DEFAULT_PROFILE = MistakeProfile()


@dataclass(frozen=True)
class Demo:
    prompt: str
    turns: tuple[tuple[str, str], ...]
    reward: float


def demo_episode(env_name: str, task: TaskSpec, rng: random.Random, profile: MistakeProfile = DEFAULT_PROFILE) -> Demo:
    env = make_env(env_name)
    prompt = env.reset(task)
    if isinstance(env, MultihopEnvironment):
        turns, reward = _multihop_demo(env, rng, profile)
    elif isinstance(env, GridEnvironment):
        turns, reward = _grid_demo(env, rng, profile)
    elif isinstance(env, arith.MathEnvironment):
        turns, reward = _math_demo(env, rng, profile)
    elif isinstance(env, toolcall.ToolCallEnvironment):
        turns, reward = _toolcall_demo(env, rng, profile)
    elif isinstance(env, webshop.WebShopEnvironment):
        turns, reward = _webshop_demo(env, rng, profile)
    else:
        turns, reward = _expert_demo(env)
    return Demo(prompt=prompt, turns=tuple(turns), reward=reward)


def _expert_demo(env: Environment) -> tuple[list[tuple[str, str]], float]:
    turns = []
    while True:
        action = env.expert_action()
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward


def _multihop_demo(
    env: MultihopEnvironment, rng: random.Random, profile: MistakeProfile
) -> tuple[list[tuple[str, str]], float]:
    question = env.question
    relations = question.kb.config.relations
    hops_to_search = question.hops
    if (
        question.hops > 1
        and profile.answers_early(question.start.split()[0], question.hops)
        and rng.random() < profile.premature_consistency
    ):
        hops_to_search -= 1
    entity = question.start
    turns = []
    for hop in range(hops_to_search):
        relation = question.path[hop]
        confused = profile.confused_relation(relation)
        if confused in relations and rng.random() < profile.confusion_rate:
            relation = confused
        action = search_turn(relation, entity)
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward
        # The demo may only use facts it was shown; when the searched fact is not among the
        # passages it stops searching and answers what it has.
        if question.kb.fact_doc[(relation, entity)] not in env.retrieved_ids:
            break
        entity = question.kb.facts[(relation, entity)]
    action = answer_turn(entity)
    result = env.step(action)
    turns.append((action, result.observation))
    return turns, result.reward


def _risky_context(env: GridEnvironment) -> bool:
    if isinstance(env, frozenlake.FrozenLakeEnvironment):
        return any(frozenlake.neighbour_holes(env.level, env.state).values())
    if isinstance(env, sokoban.SokobanEnvironment):
        room, state = env.level, env.state
        return any(state[0] + delta in state[1:] for delta in room.deltas.values())
    return False


def _grid_demo(
    env: GridEnvironment, rng: random.Random, profile: MistakeProfile
) -> tuple[list[tuple[str, str]], float]:
    turns = []
    while True:
        action = env.expert_action()
        move = parse_move(action)
        confused = profile.confused_move(move) if move is not None else None
        if confused is not None and _risky_context(env) and rng.random() < profile.grid_confusion_rate:
            action = move_turn(confused, env.move_reason(confused))
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward


def _math_demo(
    env: arith.MathEnvironment, rng: random.Random, profile: MistakeProfile
) -> tuple[list[tuple[str, str]], float]:
    problem = env.problem
    steps_to_calculate = len(problem.steps)
    if (
        steps_to_calculate > 1
        and profile.answers_math_early(problem.question.split()[0], steps_to_calculate)
        and rng.random() < profile.premature_consistency
    ):
        steps_to_calculate -= 1
    # The demo's own values: after a confused step, later steps build on its wrong result.
    values: list[Fraction] = []
    turns = []
    for index, step in enumerate(problem.steps[:steps_to_calculate]):
        template = step.template
        confused = profile.confused_operator(step.kind)
        if confused is not None and rng.random() < profile.math_confusion_rate:
            right = arith.KIND_OPERATORS[step.kind]
            template = template.replace(f" {right} ", f" {confused} ", 1)
        expression = arith.resolve(template, values)
        try:
            values.append(evaluate(expression))
        except CalculatorError:
            break  # a confusion that divides by zero: answer what it has
        action = arith.calculate_turn(index, step.kind, expression)
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward
    action = arith.answer_turn(problem.answer if values == list(problem.values) else values[-1])
    result = env.step(action)
    turns.append((action, result.observation))
    return turns, result.reward


def _toolcall_demo(
    env: toolcall.ToolCallEnvironment, rng: random.Random, profile: MistakeProfile
) -> tuple[list[tuple[str, str]], float]:
    plan = list(env.task.solution)
    quotes = toolcall.request_quotes(env.task.instruction, plan)
    writes = [index for index, call in enumerate(plan) if TOOLS[call.name].writes]
    first_name = _customer_first_name(plan)
    if (
        writes
        and first_name
        and profile.replies_early(first_name, len(writes))
        and rng.random() < profile.premature_consistency
    ):
        del plan[writes[-1]]
    turns = []
    for index, call in enumerate(plan):
        confused = profile.confused_reason(call.arguments.get("reason", "")) if call.name == "cancel_order" else None
        if confused is not None and rng.random() < profile.toolcall_confusion_rate:
            call = toolcall.make_call(call.name, {**call.arguments, "reason": confused})
        action = toolcall.call_turn(index, call, quotes[index])
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward
    action = toolcall.answer_turn()
    result = env.step(action)
    turns.append((action, result.observation))
    return turns, result.reward


def _customer_first_name(plan: list[toolcall.Call]) -> str:
    """The first name the request's customer is looked up by ("" when the plan starts otherwise)."""
    if not plan or plan[0].name != "find_user":
        return ""
    return plan[0].arguments["name"].split()[0]


def _webshop_demo(
    env: webshop.WebShopEnvironment, rng: random.Random, profile: MistakeProfile
) -> tuple[list[tuple[str, str]], float]:
    goal = env.shop.goal
    hasty = profile.buys_hastily(goal.type) and rng.random() < profile.webshop_hasty_rate
    #: Option dimensions the demo has clicked once: it never goes back to correct them.
    decided: set[str] = set()
    turns = []
    while True:
        action = env.expert_action()
        if hasty and env.page == "results":
            look_alike = next(
                (p for p in env.results() if p.type == goal.type and set(goal.attributes) <= set(p.attributes)), None
            )
            if look_alike is not None:
                action = webshop.command_turn("click", look_alike.asin, f"open {look_alike.asin}")
        elif hasty and env.page == "item":
            action = webshop.command_turn("buy", thought="buy it")
        elif decided and env.page == "item":
            action = env.item_action(frozenset(decided))
        command = webshop.parse_command(action)
        product = env.product
        if env.page == "item" and product is not None and isinstance(command, tuple) and command[0] == "click":
            value = command[1]
            confused = profile.confused_option(value)
            if confused in product.option_values and rng.random() < profile.webshop_confusion_rate:
                # The thought still quotes the instruction; only the click goes wrong.
                thought = webshop.option_thought(env.shop.instruction, env.shop.goal.options, value)
                value = confused
                action = webshop.command_turn("click", value, thought)
            decided.add(product.option_values[value])
        result = env.step(action)
        turns.append((action, result.observation))
        if result.done:
            return turns, result.reward
