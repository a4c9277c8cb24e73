"""Synthetic multi-hop search QA: "who is the manager of the mentor of Ana Ruiz ?".

A task names a knowledge base (by its ``KBConfig`` fields), a start person and a relation
path (first hop first). The policy must search one fact per hop and answer the last entity.
Task params::

    {"kb_seed": int, "num_people": int, "num_relations": int, "distractors": int,
     "top_k": int, "start": "Ana Ruiz", "path": ["mentor", "manager"]}

Questions are generated only when every hop's canonical query ("mentor of Ana Ruiz") puts
the needed fact in the top-k, so every task is solvable by searching the obvious thing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from protocol import TaskSpec

from . import tags
from .base import EnvironmentError_
from .kb import KBConfig, KnowledgeBase, cached_kb, fact_query, question_text
from .retrieval import SearchIndex
from .searchqa import SearchEpisode, SearchQAEnvironment
from .splits import split_parity

NAME = "multihop"
MAX_TURNS_CAP = 5
MAX_HOPS = MAX_TURNS_CAP - 1
PROMPT_PREFIX = "question :"

_KB_KEYS = ("kb_seed", "num_people", "num_relations", "distractors")


@dataclass(frozen=True)
class MultihopQuestion:
    kb: KnowledgeBase
    index: SearchIndex
    start: str
    path: tuple[str, ...]
    top_k: int

    @property
    def chain(self) -> list[str]:
        return self.kb.follow(self.start, self.path)

    @property
    def hops(self) -> int:
        return len(self.path)

    def hop_fact_doc(self, hop: int) -> int:
        return self.kb.fact_doc[(self.path[hop], self.chain[hop])]


def parse_question(params: dict[str, Any]) -> MultihopQuestion:
    """Task params -> question, with ``EnvironmentError_`` naming the first bad field."""
    for key in (*_KB_KEYS, "top_k"):
        if type(params.get(key)) is not int:
            raise EnvironmentError_(f"multihop task param {key!r} must be an int, got {params.get(key)!r}")
    try:
        config = KBConfig(**{key: params[key] for key in _KB_KEYS})
    except ValueError as err:
        raise EnvironmentError_(f"multihop task: {err}") from err
    kb, index = cached_kb(config)
    start, path = params.get("start"), params.get("path")
    if start not in kb.people:
        raise EnvironmentError_(f"multihop task start {start!r} is not a person of kb {config.kb_seed}")
    if not isinstance(path, list) or not 1 <= len(path) <= MAX_HOPS or any(r not in config.relations for r in path):
        raise EnvironmentError_(
            f"multihop task path must list 1-{MAX_HOPS} relations from {list(config.relations)}, got {path!r}"
        )
    if not 1 <= params["top_k"] <= 20:
        raise EnvironmentError_(f"multihop task top_k must be in [1, 20], got {params['top_k']}")
    return MultihopQuestion(kb=kb, index=index, start=start, path=tuple(path), top_k=params["top_k"])


class MultihopEnvironment(SearchQAEnvironment):
    name = NAME
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._question: MultihopQuestion | None = None

    @property
    def question(self) -> MultihopQuestion:
        return self._started(self._question)

    def _load_episode(self, task: TaskSpec) -> SearchEpisode:
        question = parse_question(task.params)
        self._question = question
        return SearchEpisode(
            prompt=f"{PROMPT_PREFIX} {question_text(question.start, question.path)}",
            golden_answers=(question.chain[-1],),
            index=question.index,
            top_k=question.top_k,
            max_turns=min(question.hops + 1, MAX_TURNS_CAP),
        )

    def hops_found(self) -> int:
        """How many leading hops have had their fact shown to the policy."""
        question, retrieved = self.question, self.retrieved_ids
        found = 0
        while found < question.hops and question.hop_fact_doc(found) in retrieved:
            found += 1
        return found

    def _progress(self) -> float:
        return self.hops_found() / (self.question.hops + 1)

    def expert_action(self) -> str:
        return expert_turn(self.question, self.hops_found())


def search_turn(relation: str, subject: str) -> str:
    return f"{tags.think(f'need the {relation} of {subject}')} {tags.search(fact_query(relation, subject))}"


def answer_turn(entity: str) -> str:
    return f"{tags.think(f'the answer is {entity}')} {tags.answer(entity)}"


def expert_turn(question: MultihopQuestion, hops_found: int) -> str:
    chain = question.chain
    if hops_found >= question.hops:
        return answer_turn(chain[-1])
    return search_turn(question.path[hops_found], chain[hops_found])


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    min_hops: int = 1,
    max_hops: int = 4,
    num_people: int = 60,
    num_relations: int = 4,
    distractors: int = 2,
    top_k: int = 3,
    num_kbs: int = 4,
) -> list[TaskSpec]:
    """``count`` distinct questions over ``num_kbs`` knowledge bases of this split.

    Train and held-out use disjoint knowledge bases (even vs odd KB seeds), so held-out
    success measures searching, not memorised facts.
    """
    if not 1 <= min_hops <= max_hops <= MAX_HOPS:
        raise ValueError(f"need 1 <= min_hops <= max_hops <= {MAX_HOPS}, got {min_hops}, {max_hops}")
    if num_kbs < 1:
        raise ValueError(f"num_kbs must be >= 1, got {num_kbs}")
    rng = random.Random(f"{NAME}:{split}:{seed}")
    parity = split_parity(split)
    kb_seeds = sorted({2 * rng.randrange(1 << 30) + parity for _ in range(num_kbs)})
    configs = [KBConfig(s, num_people, num_relations, distractors) for s in kb_seeds]
    tasks: dict[str, TaskSpec] = {}
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"could not generate {count} distinct multihop questions; loosen the difficulty knobs")
        config = rng.choice(configs)
        kb, index = cached_kb(config)
        path = tuple(rng.choice(config.relations) for _ in range(rng.randint(min_hops, max_hops)))
        question = MultihopQuestion(kb, index, rng.choice(kb.people), path, top_k)
        if not _well_posed(question):
            continue
        params = {key: getattr(config, key) for key in _KB_KEYS}
        params.update(top_k=top_k, start=question.start, path=list(path))
        task_id = f"{NAME}-{config.kb_seed}-{question.start.replace(' ', '_')}-{'.'.join(path)}-k{top_k}"
        tasks.setdefault(task_id, TaskSpec(env=NAME, task_id=task_id, params=params))
    return list(tasks.values())


def _well_posed(question: MultihopQuestion) -> bool:
    """Distinct entities along the chain, and each hop's fact is found by its canonical query."""
    chain = question.chain
    if len(set(chain)) != len(chain):
        return False
    for hop, relation in enumerate(question.path):
        found = question.index.search_ids(fact_query(relation, chain[hop]), question.top_k)
        if question.hop_fact_doc(hop) not in found:
            return False
    return True
