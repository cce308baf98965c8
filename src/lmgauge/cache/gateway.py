"""The response cache as the gateway uses it (`[gateway] cache = true`).

Lookups and stores run in worker threads, so a SQLite or Redis round trip and the embedding
never stall the event loop; the key is the backend the gateway resolved, never the client's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from ..config import Settings
from ..types import ChatRequest, GenerateRequest, Result
from .response import ResponseCache

log = logging.getLogger("lmgauge.cache")


class GatewayCache:
    """The response cache as the gateway uses it (`[gateway] cache = true`): deterministic chat
    and generate requests (a generate is looked up as the same conversation; raw prompts and
    fill-in-the-middle are not cached). Lookups and stores run in worker threads, so a SQLite or
    Redis round trip and the embedding never stall the event loop; a store does not delay the
    answer's final chunk."""

    def __init__(self, cache: ResponseCache):
        self.cache = cache
        self._pending: set[asyncio.Future[Any]] = set()

    def _request(self, backend: str, request: ChatRequest | GenerateRequest) -> ChatRequest | None:
        """The request as the cache keys it: under the backend that answers (engine kind, server,
        target: the gateway resolves it), never the name the client sent, so an answer fetched
        through one backend is never served for another. A copy: the client's request is not
        changed."""
        if isinstance(request, GenerateRequest):
            if request.raw or request.suffix:
                return None
            request = request.as_chat()
        if not self.cache.cacheable(request):
            return None
        return dataclasses.replace(request, model=backend)

    async def get(self, backend: str, request: ChatRequest | GenerateRequest) -> Result | None:
        chat = self._request(backend, request)
        if chat is None:
            return None
        hit = await asyncio.to_thread(self.cache.lookup, chat)
        return hit.result if hit is not None else None

    def put(self, backend: str, request: ChatRequest | GenerateRequest, result: Result) -> None:
        chat = self._request(backend, request)
        if chat is None:
            return
        stored = asyncio.get_running_loop().run_in_executor(None, self.cache.store, chat, result)
        self._pending.add(stored)
        stored.add_done_callback(self._stored)

    def _stored(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.warning("response cache: storing an answer failed: %s", future.exception())


def gateway_cache(settings: Settings, client: Any) -> GatewayCache | None:
    """The gateway's hook: a cache when `[gateway] cache = true` (and `[cache] enabled`), else None."""
    if not (settings.gateway.cache and settings.cache.enabled):
        return None
    return GatewayCache(ResponseCache.from_settings(settings, client=client))
