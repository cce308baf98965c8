"""What a cache backend stores and answers: entries, candidates, stats, the Backend protocol.

Two implementations: sqlite_backend.py (the lmgauge store, one machine) and redis_backend.py
(several gateway replicas sharing one cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..types import Result


@dataclass
class Entry:
    key: str  # exact key
    context_key: str  # the semantic neighbourhood: everything but the last user message
    model: str
    question: str  # the last user message
    embedding: bytes | None  # float32, unit length; None for requests without a user message
    response: dict[str, Any]
    created: float
    expires: float
    hits: int = 0


@dataclass
class CacheHit:
    result: Result
    kind: str  # "exact" | "semantic"
    similarity: float
    key: str
    question: str  # the cached question that answered


@dataclass
class CacheStats:
    entries: int
    hits: int
    backend: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    """What a semantic lookup needs of a stored entry (its answer is read only if it wins)."""

    key: str
    question: str
    embedding: bytes


class Backend(Protocol):
    name: str

    def get(self, key: str, now: float) -> Entry | None: ...
    def neighbours(self, context_key: str, now: float) -> list[Candidate]: ...
    def put(self, entry: Entry, max_entries: int) -> None: ...
    def touch(self, key: str, now: float) -> None: ...
    def clear(self) -> int: ...
    def stats(self, now: float) -> CacheStats: ...
