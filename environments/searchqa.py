"""Search-R1 style question answering: the turn logic shared by every search environment.

A turn is ``<think> ... </think>`` followed by ``<search> query </search>`` (answered with the
top-k passages in ``<information> ... </information>``) or ``<answer> text </answer>`` (ends
the episode; reward 1 on a normalised exact match with a golden answer). Anything else is an
invalid action: it costs a turn and gets an error observation.

Subclasses decide where questions, golden answers and the search index come from.
"""

from __future__ import annotations

import abc
import re
import string
from dataclasses import dataclass
from typing import Any

from protocol import TaskSpec

from . import tags
from .retrieval import SearchIndex
from .snapshots import require
from .turns import TurnEnvironment

INVALID_ACTION_OBSERVATION = tags.information("invalid action")
NO_RESULTS_OBSERVATION = tags.information("no results")
PASSAGE_SEPARATOR = " ; "

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD-style EM)."""
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def exact_match(prediction: str, golden_answers: tuple[str, ...]) -> bool:
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(g) for g in golden_answers)


@dataclass(frozen=True)
class SearchEpisode:
    """Everything fixed for one task: the question, what counts as right, where to search."""

    prompt: str
    golden_answers: tuple[str, ...]
    index: SearchIndex
    top_k: int
    max_turns: int


class SearchQAEnvironment(TurnEnvironment, abc.ABC):
    stop_strings = tags.ACTION_STOP_STRINGS
    special_tokens = tags.SEARCH_R1_TAGS
    max_turns = 5

    def __init__(self) -> None:
        super().__init__()
        self._episode: SearchEpisode | None = None
        self._retrieved: set[int] = set()

    # -- hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    def _load_episode(self, task: TaskSpec) -> SearchEpisode:
        """Interpret ``task.params``; raise ``EnvironmentError_`` on a task it cannot serve."""

    @abc.abstractmethod
    def _progress(self) -> float:
        """Heuristic progress in [0, 1) of an unfinished episode, from ``self._retrieved``."""

    @abc.abstractmethod
    def expert_action(self) -> str:
        """See ``Environment.expert_action``."""

    # -- Environment -------------------------------------------------------------------

    def reset(self, task: TaskSpec) -> str:
        self._start(task)
        return self.episode.prompt

    def score(self) -> float:
        if self._done:
            return self._reward
        return self._progress()

    # -- TurnEnvironment ---------------------------------------------------------------

    def _begin(self, task: TaskSpec) -> None:
        episode = self._load_episode(task)
        self._episode, self.max_turns, self._retrieved = episode, episode.max_turns, set()

    def _act(self, action_text: str) -> str:
        parsed = tags.parse_action(action_text)
        if parsed is None:
            return INVALID_ACTION_OBSERVATION
        if parsed.kind == "answer":
            self._done = True
            self._reward = 1.0 if exact_match(parsed.content, self.episode.golden_answers) else 0.0
            return ""
        return self._search_observation(parsed.content)

    def _own_state(self) -> dict[str, Any]:
        return {"retrieved": sorted(self._retrieved)}

    def _restore_own_state(self, snapshot: dict[str, Any], turn: int, done: bool, reward: float) -> None:
        retrieved: Any = snapshot.get("retrieved")
        require(
            isinstance(retrieved, list) and all(type(i) is int for i in retrieved),
            "snapshot retrieved must be a list of ints",
        )
        require(
            all(0 <= i < len(self.episode.index.documents) for i in retrieved), "snapshot retrieved ids out of range"
        )
        self._retrieved = set(retrieved)

    # -- shared helpers ----------------------------------------------------------------

    @property
    def episode(self) -> SearchEpisode:
        return self._started(self._episode)

    @property
    def retrieved_ids(self) -> frozenset[int]:
        return frozenset(self._retrieved)

    def _search_observation(self, query: str) -> str:
        episode = self.episode
        ids = episode.index.search_ids(query, episode.top_k)
        if not ids:
            return NO_RESULTS_OBSERVATION
        self._retrieved.update(ids)
        return tags.information(PASSAGE_SEPARATOR.join(episode.index.documents[i].text for i in ids))
