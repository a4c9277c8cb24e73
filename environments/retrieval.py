"""BM25 search over a small document collection, built with the ``bm25s`` library.

Documents have a title (the entity they are about) and a text. The index sees the title
and the text, as in the Search-R1 corpora, so a query naming an entity ranks the documents
*about* that entity above documents that merely mention it; the searcher sees the text only.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import bm25s
import numpy as np

_WORD = re.compile(r"\w+")
# Function words carry no evidence about which fact a query wants; dropping them keeps
# scores driven by names and relations.
_STOPWORDS = frozenset({"the", "of", "is", "a", "an", "who", "what", "in", "as", "was", "and", "to"})


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str


def index_terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class SearchIndex:
    """An immutable BM25 index with a bounded cache of query results.

    Environments are stepped thousands of times with the same few queries per task, so
    results are memoised; retrieval is deterministic, hence caching cannot change behaviour.
    """

    _QUERY_CACHE_SIZE = 4096

    def __init__(self, documents: list[Document]) -> None:
        if not documents:
            raise ValueError("a search index needs at least one document")
        self.documents: tuple[Document, ...] = tuple(documents)
        self._retriever = bm25s.BM25()
        corpus_terms = [index_terms(f"{d.title} {d.text}") or [""] for d in documents]
        self._retriever.index(corpus_terms, show_progress=False)
        self._vocab = self._retriever.vocab_dict
        self._cache: OrderedDict[tuple[str, int], tuple[int, ...]] = OrderedDict()

    def search(self, query: str, top_k: int) -> list[Document]:
        return [self.documents[i] for i in self.search_ids(query, top_k)]

    def search_ids(self, query: str, top_k: int) -> tuple[int, ...]:
        key = (query, top_k)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        result = self._rank(query, top_k)
        self._cache[key] = result
        if len(self._cache) > self._QUERY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return result

    def _rank(self, query: str, top_k: int) -> tuple[int, ...]:
        terms = [t for t in index_terms(query) if t in self._vocab]
        if not terms or top_k < 1:
            return ()
        scores = self._retriever.get_scores(terms)
        k = min(top_k, len(self.documents))
        # Stable order: higher score first, then lower document index, so ties never
        # depend on the sort implementation.
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return tuple(int(i) for i in order if scores[i] > 0)
