"""The tag vocabulary shared by every environment, and the one parser of action texts.

All environments speak the same Search-R1 style format so that one tokenizer and one model
cover them: the policy writes ``<think> ... </think>`` followed by ``<search> ... </search>``
or ``<answer> ... </answer>``; environments reply inside ``<information> ... </information>``.
The math environment calls its calculator with ``<calculate> ... </calculate>`` instead of
searching. The function-calling environment speaks Qwen3's native tool format: a call is
``<tool_call> {"name": ..., "arguments": {...}} </tool_call>`` and the result comes back in
``<tool_response> ... </tool_response>``; the store environment writes WebShop's actions
(``search[...]``, ``click[...]``, ``back``, ``buy``) inside ``<answer>``.

A space always follows an opening tag and precedes a closing tag: a byte-level BPE tokenizer
gives "Omar" and " Omar" different ids, and the fixed spacing makes an entity name tokenise
identically wherever it appears (prompt, observation, action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
CALCULATE_OPEN, CALCULATE_CLOSE = "<calculate>", "</calculate>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

#: The tags of the search and grid environments, in the order their tokenizers add them.
SEARCH_R1_TAGS: tuple[str, ...] = (
    THINK_OPEN,
    THINK_CLOSE,
    SEARCH_OPEN,
    SEARCH_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
    INFO_OPEN,
    INFO_CLOSE,
)
#: The math environment's tags: a calculator call replaces the search.
CALCULATOR_TAGS: tuple[str, ...] = (
    THINK_OPEN,
    THINK_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
    INFO_OPEN,
    INFO_CLOSE,
    CALCULATE_OPEN,
    CALCULATE_CLOSE,
)
#: The function-calling environment's tags: Qwen3's tool call and tool response replace the search.
TOOL_CALL_TAGS: tuple[str, ...] = (
    THINK_OPEN,
    THINK_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
)
#: The store environment's tags: every action is an answer, every page an information block.
STORE_TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, INFO_OPEN, INFO_CLOSE)
#: Every tag, in one fixed order; new tags go at the end so earlier ids never move.
ALL_TAGS: tuple[str, ...] = (
    *SEARCH_R1_TAGS,
    CALCULATE_OPEN,
    CALCULATE_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
)

#: Every search or grid action ends with one of these; generation stops on them.
ACTION_STOP_STRINGS: tuple[str, ...] = (SEARCH_CLOSE, ANSWER_CLOSE)
#: Every math action ends with one of these.
CALCULATOR_STOP_STRINGS: tuple[str, ...] = (CALCULATE_CLOSE, ANSWER_CLOSE)
#: Every function-calling action ends with one of these.
TOOL_CALL_STOP_STRINGS: tuple[str, ...] = (TOOL_CALL_CLOSE, ANSWER_CLOSE)
#: Every store action is an answer.
STORE_STOP_STRINGS: tuple[str, ...] = (ANSWER_CLOSE,)

ActionKind = Literal["search", "answer", "calculate", "tool_call"]

_ACTION_TAGS: dict[ActionKind, tuple[str, str]] = {
    "search": (SEARCH_OPEN, SEARCH_CLOSE),
    "answer": (ANSWER_OPEN, ANSWER_CLOSE),
    "calculate": (CALCULATE_OPEN, CALCULATE_CLOSE),
    "tool_call": (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
}
SEARCH_ACTIONS: tuple[ActionKind, ...] = ("search", "answer")
CALCULATOR_ACTIONS: tuple[ActionKind, ...] = ("calculate", "answer")
TOOL_CALL_ACTIONS: tuple[ActionKind, ...] = ("tool_call", "answer")


@dataclass(frozen=True)
class ParsedAction:
    kind: ActionKind
    content: str


def wrap(open_tag: str, close_tag: str, content: str) -> str:
    return f"{open_tag} {content} {close_tag}"


def think(text: str) -> str:
    return wrap(THINK_OPEN, THINK_CLOSE, text)


def search(query: str) -> str:
    return wrap(SEARCH_OPEN, SEARCH_CLOSE, query)


def answer(text: str) -> str:
    return wrap(ANSWER_OPEN, ANSWER_CLOSE, text)


def information(text: str) -> str:
    return wrap(INFO_OPEN, INFO_CLOSE, text)


def calculate(expression: str) -> str:
    return wrap(CALCULATE_OPEN, CALCULATE_CLOSE, expression)


def tool_call(call_json: str) -> str:
    return wrap(TOOL_CALL_OPEN, TOOL_CALL_CLOSE, call_json)


def tool_response(result_json: str) -> str:
    return wrap(TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE, result_json)


def parse_action(
    text: str, kinds: tuple[ActionKind, ...] = SEARCH_ACTIONS, keep_spacing: bool = False
) -> ParsedAction | None:
    """The first complete block of ``text`` among ``kinds`` (search or answer by default), or ``None``.

    Blocks of other kinds are not actions here: a calculator call in a search environment is
    as invalid as free text.

    Uses ``str.find`` rather than a regular expression so the cost stays linear in the text
    length even for adversarial input (many opening tags and no closing one).
    The content is whitespace-stripped, and its inner runs of whitespace become one space unless
    ``keep_spacing`` (for contents whose spacing is data, such as a file's text in a tool call's
    arguments); an empty block counts as no action.
    """
    starts = {kind: text.find(_ACTION_TAGS[kind][0]) for kind in kinds}
    found = [(pos, kind) for kind, pos in starts.items() if pos >= 0]
    if not found:
        return None
    pos, kind = min(found)
    open_tag, close_tag = _ACTION_TAGS[kind]
    body_start = pos + len(open_tag)
    end = text.find(close_tag, body_start)
    if end < 0:
        return None
    body = text[body_start:end]
    content = body.strip() if keep_spacing else " ".join(body.split())
    if not content:
        return None
    return ParsedAction(kind=kind, content=content)
