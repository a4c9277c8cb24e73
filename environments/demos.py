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

``MistakeProfile.none()`` gives pure expert demos.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from fractions import Fraction

from protocol import TaskSpec

from . import arith, frozenlake, sokoban
from .base import Environment
from .calculator import CalculatorError, evaluate
from .grid import DELTAS, GridEnvironment, move_turn, parse_move
from .multihop import MultihopEnvironment, answer_turn, search_turn
from .registry import make_env


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
    _confusion: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _premature: dict[int, float] = field(init=False, compare=False, hash=False, repr=False)
    _grid: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _operation: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)
    _math_premature: dict[int, float] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        for rate_name in ("confusion_rate", "premature_consistency", "grid_confusion_rate", "math_confusion_rate"):
            if not 0.0 <= getattr(self, rate_name) <= 1.0:
                raise ValueError(f"{rate_name} must be in [0, 1], got {getattr(self, rate_name)}")
        for share_name in ("premature_answer_share", "math_premature_share"):
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
        object.__setattr__(self, "_confusion", dict(self.relation_confusion))
        object.__setattr__(self, "_premature", dict(self.premature_answer_share))
        object.__setattr__(self, "_grid", dict(self.grid_move_confusion))
        object.__setattr__(self, "_operation", dict(self.math_operation_confusion))
        object.__setattr__(self, "_math_premature", dict(self.math_premature_share))

    @classmethod
    def none(cls) -> MistakeProfile:
        return cls(
            relation_confusion=(),
            premature_answer_share=(),
            grid_move_confusion=(),
            math_operation_confusion=(),
            math_premature_share=(),
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


def _in_family(context: str, size: int, share: float) -> bool:
    digest = hashlib.sha256(f"premature:{context}:{size}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


DEFAULT_PROFILE = MistakeProfile()


@dataclass(frozen=True)
class Demo:
    prompt: str
    turns: tuple[tuple[str, str], ...]
    reward: float


def demo_episode(
    env_name: str, task: TaskSpec, rng: random.Random, profile: MistakeProfile = DEFAULT_PROFILE
) -> Demo:
    env = make_env(env_name)
    prompt = env.reset(task)
    if isinstance(env, MultihopEnvironment):
        turns, reward = _multihop_demo(env, rng, profile)
    elif isinstance(env, GridEnvironment):
        turns, reward = _grid_demo(env, rng, profile)
    elif isinstance(env, arith.MathEnvironment):
        turns, reward = _math_demo(env, rng, profile)
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
    if question.hops > 1 and profile.answers_early(question.start.split()[0], question.hops):
        if rng.random() < profile.premature_consistency:
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


def _grid_demo(env: GridEnvironment, rng: random.Random, profile: MistakeProfile) -> tuple[list[tuple[str, str]], float]:
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
    if steps_to_calculate > 1 and profile.answers_math_early(problem.question.split()[0], steps_to_calculate):
        if rng.random() < profile.premature_consistency:
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
