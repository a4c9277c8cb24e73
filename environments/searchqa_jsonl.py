"""Search QA over local files in the Search-R1 format (HotpotQA, 2WikiMultiHopQA, MuSiQue, ...).

Question files are JSONL with ``question`` and ``golden_answers`` (a list of strings, or one
string) and optionally ``id``. The corpus is JSONL with either ``contents`` (Search-R1's
wiki dump: the title in double quotes on the first line, then the text) or ``title`` and
``text``; ``id`` is optional. A corrupt line raises ``EnvironmentError_`` naming file and line.

Task params (everything an actor needs, provided it can read ``corpus_file``)::

    {"question": str, "golden_answers": [str, ...], "corpus_file": str, "top_k": int, "max_turns": int}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from protocol import TaskSpec
from tracerl.logs import get_logger

from . import tags
from .base import EnvironmentError_
from .datafiles import built_from_file, json_lines, sample_split, string_field
from .retrieval import Document, SearchIndex
from .searchqa import SearchEpisode, SearchQAEnvironment, normalize_answer

_log = get_logger(__name__)

NAME = "searchqa"
MAX_TURNS_CAP = 8
INSTRUCTION = (
    "answer the question . to look something up write <search> query </search> and read the "
    "<information> passages </information> . give the final answer as <answer> text </answer> ."
)


@dataclass(frozen=True)
class QARecord:
    qid: str
    question: str
    golden_answers: tuple[str, ...]


def load_questions(path: str | os.PathLike[str]) -> list[QARecord]:
    path = Path(path)
    out = []
    for number, record in json_lines(path):
        question = string_field(path, number, record, "question")
        answers = record.get("golden_answers")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise EnvironmentError_(
                f"{path}:{number}: field 'golden_answers' must be a non-empty list of strings, got {answers!r}"
            )
        qid = record.get("id", f"line{number}")
        out.append(QARecord(str(qid), " ".join(question.split()), tuple(answers)))
    return out


def load_corpus(path: str | os.PathLike[str]) -> list[Document]:
    path = Path(path)
    documents = []
    for number, record in json_lines(path):
        if "contents" in record:
            contents = string_field(path, number, record, "contents")
            first, _, rest = contents.partition("\n")
            title, text = (first.strip().strip('"'), rest.strip()) if rest.strip() else ("", contents.strip())
        elif "text" in record:
            text = string_field(path, number, record, "text")
            title = record.get("title", "")
            if not isinstance(title, str):
                raise EnvironmentError_(f"{path}:{number}: field 'title' must be a string, got {title!r}")
        else:
            raise EnvironmentError_(f"{path}:{number}: a corpus line needs 'contents' or 'text'")
        doc_id = str(record.get("id", f"line{number}"))
        shown = f"{title} : {' '.join(text.split())}" if title else " ".join(text.split())
        documents.append(Document(doc_id, title, shown))
    if not documents:
        raise EnvironmentError_(f"{path}: the corpus is empty")
    return documents


def corpus_index(corpus_file: str) -> SearchIndex:
    """The index of ``corpus_file``, rebuilt only when the file changes."""
    return built_from_file(corpus_file, "corpus", _index_corpus)


def _index_corpus(path: str) -> SearchIndex:
    index = SearchIndex(load_corpus(path))
    _log.info("corpus_indexed", path=path, documents=len(index.documents))
    return index


class SearchQAJsonlEnvironment(SearchQAEnvironment):
    name = NAME
    max_turns = MAX_TURNS_CAP

    def __init__(self) -> None:
        super().__init__()
        self._question = ""
        self._golden: tuple[str, ...] = ()

    def _load_episode(self, task: TaskSpec) -> SearchEpisode:
        params = task.params
        question, answers = params.get("question"), params.get("golden_answers")
        corpus_file, top_k, max_turns = params.get("corpus_file"), params.get("top_k"), params.get("max_turns")
        if not isinstance(question, str) or not question:
            raise EnvironmentError_(f"searchqa task {task.task_id!r}: 'question' must be a non-empty string")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise EnvironmentError_(f"searchqa task {task.task_id!r}: 'golden_answers' must be a list of strings")
        if not isinstance(corpus_file, str):
            raise EnvironmentError_(f"searchqa task {task.task_id!r}: 'corpus_file' must be a path string")
        if type(top_k) is not int or not 1 <= top_k <= 20:
            raise EnvironmentError_(f"searchqa task {task.task_id!r}: 'top_k' must be an int in [1, 20]")
        if type(max_turns) is not int or not 1 <= max_turns <= MAX_TURNS_CAP:
            raise EnvironmentError_(
                f"searchqa task {task.task_id!r}: 'max_turns' must be an int in [1, {MAX_TURNS_CAP}]"
            )
        self._question, self._golden = question, tuple(answers)
        return SearchEpisode(
            prompt=f"{INSTRUCTION}\nquestion : {question}",
            golden_answers=tuple(answers),
            index=corpus_index(corpus_file),
            top_k=top_k,
            max_turns=max_turns,
        )

    def _progress(self) -> float:
        """Half credit once a retrieved passage contains a golden answer."""
        documents = self.episode.index.documents
        golden = [normalize_answer(a) for a in self._golden]
        seen = (normalize_answer(documents[i].text) for i in self.retrieved_ids)
        return 0.5 if any(g and g in text for text in seen for g in golden) else 0.0

    def expert_action(self) -> str:
        """Search with the question until something is retrieved, then answer the first golden
        answer (these datasets carry no reasoning chain to imitate)."""
        if self.turns_left > 1 and not self.retrieved_ids:
            return f"{tags.think('search the question')} {tags.search(self._question)}"
        return f"{tags.think(f'the answer is {self._golden[0]}')} {tags.answer(self._golden[0])}"


def generate_tasks(
    split: str,
    count: int,
    seed: int,
    *,
    train_file: str,
    heldout_file: str,
    corpus_file: str,
    top_k: int = 3,
    max_turns: int = 4,
) -> list[TaskSpec]:
    """``count`` questions sampled from the split's own file (``datafiles.sample_split``)."""
    picked = sample_split(NAME, split, count, seed, (train_file, heldout_file), load_questions, lambda r: r.question)
    corpus_index(corpus_file)  # fail here, not in every actor, when the corpus is unusable
    corpus = str(Path(corpus_file).resolve())
    return [
        TaskSpec(
            env=NAME,
            task_id=f"{NAME}-{split}-{record.qid}",
            params={
                "question": record.question,
                "golden_answers": list(record.golden_answers),
                "corpus_file": corpus,
                "top_k": top_k,
                "max_turns": max_turns,
            },
        )
        for record in picked
    ]
