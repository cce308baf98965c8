"""Hybrid search over a small collection of texts: BM25 (bm25s) + embeddings, fused by
reciprocal rank fusion, and packing of the results into a token budget.

Used by long-term memory (memories and archived turns) and by document retrieval. BM25 finds
exact names and rare words ("Falcon", "PostgreSQL"); embeddings find paraphrases ("where do I
live" ~ "I moved to Oslo"); RRF combines the two rankings without having to calibrate their
scores against each other: score(d) = sum over rankings of 1 / (k + rank(d)), k = 60 as in
Cormack et al. (2009).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

from ..embedding import Embedder

Mode = Literal["bm25", "embed", "hybrid"]
MODES: tuple[Mode, ...] = ("bm25", "embed", "hybrid")
RRF_K = 60

T = TypeVar("T")


def _stemmer():  # PyStemmer: "moved" ~ "move", "stores" ~ "store"; optional in bm25s
    try:
        import Stemmer

        return Stemmer.Stemmer("english")
    except ImportError:  # pragma: no cover - it is a dependency, but search still works without
        return None


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings (lists of ids, best first)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, idx in enumerate(ranking):
            scores[idx] = scores.get(idx, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


class HybridSearch:
    """An index over `texts`. `vectors` (one normalised row per text) may be given when they
    are already stored; otherwise they are computed with `embedder` (if any)."""

    def __init__(
        self,
        texts: list[str],
        embedder: Embedder | None = None,
        vectors: np.ndarray | None = None,
    ):
        self.texts = texts
        self.embedder = embedder
        self._tokenizer = bm25s.tokenization.Tokenizer(
            # NLTK's English list: question words ("what", "my") must not match every question
            stopwords=list(STOPWORDS_EN_PLUS),
            stemmer=_stemmer(),
        )
        self._bm25: bm25s.BM25 | None = None
        if texts:
            ids = self._tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
            self._bm25 = bm25s.BM25()
            self._bm25.index(ids, show_progress=False)
        if vectors is None and embedder is not None and texts:
            vectors = embedder.embed(texts)
        self.vectors = vectors

    @property
    def modes(self) -> tuple[Mode, ...]:
        return MODES if self.vectors is not None else ("bm25",)

    def bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        """Ids and BM25 scores of texts sharing at least one (stemmed, non-stopword) term."""
        if self._bm25 is None or k <= 0:
            return []
        q = self._tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)
        k = min(k, len(self.texts))
        ids, scores = self._bm25.retrieve(q, k=k, show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def dense(self, query: str, k: int) -> list[tuple[int, float]]:
        """Ids and cosine similarities, best first."""
        if self.vectors is None or self.embedder is None or not self.texts or k <= 0:
            return []
        q = self.embedder.embed([query])[0]
        sims = self.vectors @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return [(int(i), float(sims[i])) for i in order]

    def search(self, query: str, k: int = 10, mode: Mode = "hybrid") -> list[tuple[int, float]]:
        """The best `k` ids for `query`, with the score of the mode used (RRF for hybrid).
        Without embeddings every mode is BM25."""
        if mode == "embed" and self.vectors is not None:
            return self.dense(query, k)
        if mode == "hybrid" and self.vectors is not None:
            depth = max(k * 4, 50)  # fuse deeper than k, so a text second in one list can win
            fused = rrf([[i for i, _ in self.bm25(query, depth)], [i for i, _ in self.dense(query, depth)]])
            return fused[:k]
        return self.bm25(query, k)


def pack(items: Sequence[T], cost: Callable[[T], int], budget: int) -> tuple[list[T], int]:
    """Take items in order while they fit `budget` tokens; an item too big for what is left is
    skipped (a smaller one after it may still fit). Returns the items and the tokens used."""
    chosen: list[T] = []
    used = 0
    for item in items:
        c = cost(item)
        if used + c <= budget:
            chosen.append(item)
            used += c
    return chosen, used
