"""Synthetic knowledge bases for multi-hop search QA (pure, seeded).

A knowledge base is a set of people; every person has exactly one value for each relation
(another person) and a few attributes (city, job, hobby) that serve as distractor documents.
Every fact is one short document. Names are drawn from small first- and last-name pools, so
many people share a first or a last name: the look-alikes that make retrieval non-trivial.

Everything here is a deterministic function of a ``KBConfig``; the same config rebuilds the
same knowledge base in any process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from tracerl.logs import get_logger

from .retrieval import Document, SearchIndex

_log = get_logger(__name__)

FIRST_NAMES: tuple[str, ...] = (
    "Ana",
    "Omar",
    "Lina",
    "Ivan",
    "Mia",
    "Raj",
    "Eva",
    "Tom",
    "Sara",
    "Kofi",
    "Yuki",
    "Leo",
    "Nora",
    "Hugo",
    "Zara",
    "Ali",
    "Maya",
    "Finn",
    "Rosa",
    "Ben",
)
LAST_NAMES: tuple[str, ...] = (
    "Ruiz",
    "Diaz",
    "Park",
    "Kim",
    "Silva",
    "Novak",
    "Ortiz",
    "Lopez",
    "Chen",
    "Sato",
    "Moss",
    "Berg",
    "Costa",
    "Khan",
    "Reed",
    "Wolf",
    "Vega",
    "Lund",
    "Mora",
    "Hale",
)
#: Relations in the order a config with ``num_relations = n`` takes them (the first n).
RELATIONS: tuple[str, ...] = ("mentor", "manager", "friend", "coach", "teacher", "neighbor", "partner", "doctor")
#: Distractor attributes in the order ``distractors = n`` takes them, each with its values.
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("city", ("Oslo", "Lima", "Rome", "Cairo", "Quito", "Kyiv", "Hanoi", "Perth")),
    ("job", ("baker", "pilot", "nurse", "chef", "judge", "miner", "tailor", "diver")),
    ("hobby", ("chess", "golf", "tennis", "poetry", "rowing", "karate", "opera", "fishing")),
)

MAX_PEOPLE = len(FIRST_NAMES) * len(LAST_NAMES)


@dataclass(frozen=True)
class KBConfig:
    kb_seed: int
    num_people: int = 60
    num_relations: int = 4
    distractors: int = 2

    def __post_init__(self) -> None:
        if not 4 <= self.num_people <= MAX_PEOPLE:
            raise ValueError(f"num_people must be in [4, {MAX_PEOPLE}], got {self.num_people}")
        if not 1 <= self.num_relations <= len(RELATIONS):
            raise ValueError(f"num_relations must be in [1, {len(RELATIONS)}], got {self.num_relations}")
        if not 0 <= self.distractors <= len(ATTRIBUTES):
            raise ValueError(f"distractors must be in [0, {len(ATTRIBUTES)}], got {self.distractors}")

    @property
    def relations(self) -> tuple[str, ...]:
        return RELATIONS[: self.num_relations]


@dataclass(frozen=True)
class KnowledgeBase:
    config: KBConfig
    people: tuple[str, ...]
    #: (relation, person) -> person
    facts: dict[tuple[str, str], str]
    documents: tuple[Document, ...]
    #: (relation, person) -> index into ``documents`` of the document stating that fact
    fact_doc: dict[tuple[str, str], int]

    def follow(self, start: str, path: tuple[str, ...] | list[str]) -> list[str]:
        """The entities visited from ``start`` along ``path``: [start, hop1, ..., answer]."""
        chain = [start]
        for relation in path:
            chain.append(self.facts[(relation, chain[-1])])
        return chain


def statement(key: str, subject: str, value: str) -> str:
    """The one sentence form of every document, for relations and attributes alike."""
    return f"the {key} of {subject} is {value}"


def fact_query(relation: str, subject: str) -> str:
    """The canonical search query for one hop; demos and question filtering use it."""
    return f"{relation} of {subject}"


def question_text(start: str, path: tuple[str, ...] | list[str]) -> str:
    phrase = start
    for relation in path:
        phrase = f"the {relation} of {phrase}"
    return f"who is {phrase} ?"


def build_kb(config: KBConfig) -> KnowledgeBase:
    rng = random.Random(f"kb:{config.kb_seed}:{config.num_people}:{config.num_relations}:{config.distractors}")
    all_names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    people = tuple(rng.sample(all_names, config.num_people))
    facts: dict[tuple[str, str], str] = {}
    documents: list[Document] = []
    fact_doc: dict[tuple[str, str], int] = {}
    for person in people:
        for relation in config.relations:
            other = rng.choice([p for p in people if p != person])
            facts[(relation, person)] = other
            fact_doc[(relation, person)] = len(documents)
            documents.append(Document(f"{relation}:{person}", person, statement(relation, person, other)))
        for attribute, values in ATTRIBUTES[: config.distractors]:
            documents.append(
                Document(f"{attribute}:{person}", person, statement(attribute, person, rng.choice(values)))
            )
    # Shuffled so that document order (the tie-break in ranking) carries no information.
    order = list(range(len(documents)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    return KnowledgeBase(
        config=config,
        people=people,
        facts=facts,
        documents=tuple(documents[i] for i in order),
        fact_doc={key: position[i] for key, i in fact_doc.items()},
    )


@lru_cache(maxsize=512)
def cached_kb(config: KBConfig) -> tuple[KnowledgeBase, SearchIndex]:
    """One knowledge base and its index per config per process; many tasks share them."""
    kb = build_kb(config)
    index = SearchIndex(list(kb.documents))
    _log.info("knowledge_base_built", kb_seed=config.kb_seed, people=config.num_people, documents=len(kb.documents))
    return kb, index
