"""The semantic lookup: a cached question close enough by embedding that passes the guards.

Only entries of the same conversation context are searched (everything but the last user
message matched exactly, with model, options and format), so the search is over a handful of
vectors, in numpy, and never crosses conversations.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..embedding import Embedder
from .backend import Candidate
from .guard import guard_mismatch


def passing_neighbours(
    question: str, neighbours: list[Candidate], embedder: Embedder, similarity: float
) -> Iterator[tuple[Candidate, float]]:
    """The neighbours at cosine >= `similarity` to `question` that pass the guards, closest
    first, with their similarity. Candidates stored by another embedder (another dimension)
    never match."""
    if not neighbours:
        return
    vector = embedder.embed([question])[0]
    bank = np.frombuffer(b"".join(c.embedding for c in neighbours), dtype=np.float32)
    if bank.size != len(neighbours) * vector.size:
        return
    sims = bank.reshape(len(neighbours), vector.size) @ vector
    for i in np.argsort(-sims):
        if sims[i] < similarity:
            return
        candidate = neighbours[int(i)]
        if guard_mismatch(candidate.question, question, embedder) is None:
            yield candidate, float(sims[i])
