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
from .base import EnvironmentError_, Environment, StepResult
from .retrieval import SearchIndex
from .snapshots import episode_snapshot, read_episode_snapshot, require

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


class SearchQAEnvironment(Environment, abc.ABC):
    stop_strings = tags.ACTION_STOP_STRINGS
    special_tokens = tags.SEARCH_R1_TAGS
    max_turns = 5

    def __init__(self) -> None:
        self._task: TaskSpec | None = None
        self._episode: SearchEpisode | None = None
        self._turn = 0
        self._done = False
        self._reward = 0.0
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
        self._begin(task)
        return self.episode.prompt

    def step(self, action_text: str) -> StepResult:
        episode = self.episode
        if self._done:
            return StepResult(tags.information("episode is over"), True, self._reward)
        self._turn += 1
        parsed = tags.parse_action(action_text)
        if parsed is None:
            observation = INVALID_ACTION_OBSERVATION
        elif parsed.kind == "answer":
            self._done = True
            self._reward = 1.0 if exact_match(parsed.content, episode.golden_answers) else 0.0
            return StepResult("", True, self._reward)
        else:
            observation = self._search_observation(parsed.content)
        if self._turn >= episode.max_turns:
            self._done = True
        return StepResult(observation, self._done, self._reward)

    def snapshot(self) -> dict[str, Any]:
        if self._task is None:
            raise EnvironmentError_(f"{self.name}: snapshot() before reset()")
        return episode_snapshot(
            self.name, self._task, self._turn, self._done, self._reward, retrieved=sorted(self._retrieved)
        )

    def restore(self, state: dict[str, Any]) -> None:
        task, turn, done, reward = read_episode_snapshot(state, self.name)
        retrieved = state.get("retrieved")
        require(isinstance(retrieved, list) and all(type(i) is int for i in retrieved), "snapshot retrieved must be a list of ints")
        self._begin(task)
        episode = self.episode
        require(turn <= episode.max_turns, f"snapshot turn {turn} exceeds max_turns {episode.max_turns}")
        require(all(0 <= i < len(episode.index.documents) for i in retrieved), "snapshot retrieved ids out of range")
        require(done or reward == 0.0, "snapshot has a reward on an unfinished episode")
        self._turn, self._done, self._reward, self._retrieved = turn, done, float(reward), set(retrieved)

    def score(self) -> float:
        if self._done:
            return self._reward
        return self._progress()

    # -- shared helpers ----------------------------------------------------------------

    @property
    def episode(self) -> SearchEpisode:
        if self._episode is None:
            raise EnvironmentError_(f"{self.name}: reset() or restore() must come first")
        return self._episode

    @property
    def turns_left(self) -> int:
        return self.episode.max_turns - self._turn

    @property
    def retrieved_ids(self) -> frozenset[int]:
        return frozenset(self._retrieved)

    def _begin(self, task: TaskSpec) -> None:
        if task.env != self.name:
            raise EnvironmentError_(f"task {task.task_id!r} is for env {task.env!r}, not {self.name!r}")
        episode = self._load_episode(task)
        self._task, self._episode = task, episode
        self.max_turns = episode.max_turns
        self._turn, self._done, self._reward = 0, False, 0.0
        self._retrieved = set()

    def _search_observation(self, query: str) -> str:
        episode = self.episode
        ids = episode.index.search_ids(query, episode.top_k)
        if not ids:
            return NO_RESULTS_OBSERVATION
        self._retrieved.update(ids)
        return tags.information(PASSAGE_SEPARATOR.join(episode.index.documents[i].text for i in ids))
