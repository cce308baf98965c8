"""The response cache: answer repeated questions from a cache instead of a model.

    cache = ResponseCache.from_settings(settings)          # [cache] in the config
    hit = cache.lookup(request)                             # CacheHit or None
    if hit is None:
        result = client.chat(...); cache.store(request, result)

Two ways to hit:

- **exact**: the normalized request hashes to a stored key (keys.py).
- **semantic**: the same conversation so far and a last user message whose embedding is close
  enough (cosine >= `similarity`) to a cached one, **and** that passes the guards (semantic.py,
  guard.py).

Only deterministic requests are cached (temperature 0, or a fixed seed): caching a request that
asks for sampling would freeze one sample. `force=True` caches any request.

Entries expire after `ttl` seconds; beyond `max_entries` the least recently used go first.
Backends: SQLite (the lmgauge store, default) or Redis, shared by several gateway replicas.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..client import as_messages, as_options
from ..config import CacheSettings, Settings
from ..embedding import Embedder, make_embedder
from ..types import ChatRequest, Message, Result, Timings
from .backend import Backend, CacheHit, CacheStats, Entry
from .keys import is_deterministic, request_key
from .redis_backend import RedisBackend
from .semantic import passing_neighbours
from .sqlite_backend import SQLiteBackend


class ResponseCache:
    def __init__(self, backend: Backend, settings: CacheSettings | None = None, embedder: Embedder | None = None):
        self.backend = backend
        self.settings = settings or CacheSettings()
        self._embedder = embedder

    @classmethod
    def from_settings(cls, settings: Settings, store: Any = None, client: Any = None) -> ResponseCache:
        cs = settings.cache
        if cs.backend == "redis":
            backend: Backend = RedisBackend(cs.redis_url)
        else:
            from ..store import Store

            backend = SQLiteBackend(store or Store(settings.db_path))
        embedder = make_embedder(cs.embedder, client) if cs.semantic else None
        return cls(backend, cs, embedder)

    @property
    def embedder(self) -> Embedder | None:
        return self._embedder if self.settings.semantic else None

    def cacheable(self, request: ChatRequest, force: bool = False) -> bool:
        return self.settings.enabled and (force or is_deterministic(request.options))

    @staticmethod
    def question(request: ChatRequest) -> str | None:
        if request.messages and request.messages[-1].role == "user":
            return request.messages[-1].content
        return None

    def lookup(self, request: ChatRequest, force: bool = False) -> CacheHit | None:
        """A cached answer for this request, exact or (if enabled) semantic; None on a miss."""
        if not self.cacheable(request, force):
            return None
        now = time.time()
        key = request_key(request)
        entry = self.backend.get(key, now)
        if entry is not None:
            self.backend.touch(key, now)
            return CacheHit(_result(entry, request.model), "exact", 1.0, key, entry.question)
        question = self.question(request)
        if self.embedder is None or question is None:
            return None
        neighbours = self.backend.neighbours(request_key(request, without_last_user=True), now)
        for candidate, similarity in passing_neighbours(question, neighbours, self.embedder, self.settings.similarity):
            entry = self.backend.get(candidate.key, now)
            if entry is None:  # expired or evicted a moment ago
                continue
            self.backend.touch(candidate.key, now)
            return CacheHit(_result(entry, request.model), "semantic", similarity, candidate.key, candidate.question)
        return None

    def store(self, request: ChatRequest, result: Result, force: bool = False) -> bool:
        """Keep a finished answer; only complete ones (done_reason "stop") of cacheable requests."""
        if not self.cacheable(request, force) or result.done_reason != "stop":
            return False
        question = self.question(request)
        embedding = None
        if self.embedder is not None and question is not None:
            embedding = self.embedder.embed([question])[0].astype(np.float32).tobytes()
        now = time.time()
        t = result.timings
        entry = Entry(
            key=request_key(request),
            context_key=request_key(request, without_last_user=True),
            model=request.model,
            question=question or "",
            embedding=embedding,
            response={
                "content": result.content,
                "done_reason": result.done_reason,
                "tool_calls": result.tool_calls,
                "thinking": result.thinking,
                "engine": result.engine,
                "prompt_tokens": t.prompt_tokens,
                "output_tokens": t.output_tokens,
            },
            created=now,
            expires=now + self.settings.ttl,
        )
        self.backend.put(entry, self.settings.max_entries)
        return True

    def clear(self) -> int:
        return self.backend.clear()

    def stats(self) -> CacheStats:
        return self.backend.stats(time.time())


def _result(entry: Entry, model: str) -> Result:
    """A cached answer as a Result: the stored text and token counts; no engine time was spent,
    so the engine clock fields are zero (the caller stamps its own client clock)."""
    r = entry.response
    timings = Timings(
        prompt_tokens=r.get("prompt_tokens", 0),
        output_tokens=r.get("output_tokens", 0),
        prompt_eval_tokens=0,
        eval_ns=0,
        prompt_eval_ns=0,
        total_ns=0,
    )
    return Result(
        model=model,
        content=r["content"],
        done_reason=r.get("done_reason", "stop"),
        timings=timings,
        engine="cache",
        tool_calls=r.get("tool_calls"),
        thinking=r.get("thinking") or "",
    )


def as_request(
    model: str,
    messages: list[Message | dict[str, Any]],
    options: Any = None,
    format: Any = None,
    tools: list[dict[str, Any]] | None = None,
) -> ChatRequest:
    """A ChatRequest from Client-style arguments (the cache's key is built from it)."""
    return ChatRequest(
        model=model, messages=as_messages(messages), options=as_options(options), format=format, tools=tools
    )
