"""Answer repeated (and paraphrased) questions from a cache instead of a model.

cache = ResponseCache.from_settings(settings)          # [cache] in the config
hit = cache.lookup(request)                             # CacheHit or None
if hit is None:
    result = client.chat(...); cache.store(request, result)

response.py        ResponseCache: lookup (exact, then semantic) and store; as_request
keys.py            the exact and context keys of a request; which requests are deterministic
semantic.py        the semantic lookup: close cached questions, closest first, guards passed
guard.py           the guards: same numbers, negations, named things, no swapped topic word
backend.py         Entry, CacheHit, CacheStats and the Backend protocol
sqlite_backend.py  the `response_cache` table of the lmgauge store (default)
redis_backend.py   Redis, shared by several gateway replicas
gateway.py         GatewayCache: the cache off the gateway's event loop, keyed by backend
evaluation.py      `lmgauge eval cache`: paraphrase hit rate, near-miss false hits, latency
"""

from .backend import Backend, CacheHit, CacheStats, Candidate, Entry
from .gateway import GatewayCache, gateway_cache
from .guard import entities_in, guard_mismatch, negations_in, numbers_in, word_swap
from .keys import (
    NON_SEMANTIC_OPTIONS,
    is_deterministic,
    normalized_request,
    request_key,
)
from .redis_backend import RedisBackend
from .response import ResponseCache, as_request
from .sqlite_backend import CACHE_DDL, SQLiteBackend

__all__ = [
    "CACHE_DDL",
    "NON_SEMANTIC_OPTIONS",
    "Backend",
    "CacheHit",
    "CacheStats",
    "Candidate",
    "Entry",
    "GatewayCache",
    "RedisBackend",
    "ResponseCache",
    "SQLiteBackend",
    "as_request",
    "entities_in",
    "gateway_cache",
    "guard_mismatch",
    "is_deterministic",
    "negations_in",
    "normalized_request",
    "numbers_in",
    "request_key",
    "word_swap",
]
