"""The cache on Redis, shared by several gateway replicas (`[cache] backend = "redis"`)."""

from __future__ import annotations

import json
from typing import cast

from ..errors import InvalidOptionError
from .backend import CacheStats, Candidate, Entry


class RedisBackend:
    """Redis, for several gateway replicas sharing one cache. Layout (prefix `lmgauge:cache:`):
    `e:<key>` a hash per entry (fields as Entry, expiring by Redis TTL); `c:<context_key>` a set of
    the entry keys in one semantic neighbourhood; `lru` a sorted set key -> last use, for the size
    limit. Similarity is computed here (numpy) over one neighbourhood, so no Redis module is needed."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "lmgauge:cache:"):
        import redis

        self.url = url
        self.prefix = prefix
        self.db = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        try:
            self.db.ping()
        except redis.RedisError as exc:
            raise InvalidOptionError(
                f'cannot reach the Redis cache at {url} ({exc}); start redis-server or set [cache] backend = "sqlite"'
            ) from None

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _entry(self, data: dict[bytes, bytes]) -> Entry:
        emb = data.get(b"embedding") or None
        return Entry(
            key=data[b"key"].decode(),
            context_key=data[b"context_key"].decode(),
            model=data[b"model"].decode(),
            question=data[b"question"].decode(),
            embedding=emb,
            response=json.loads(data[b"response"]),
            created=float(data[b"created"]),
            expires=float(data[b"expires"]),
            hits=int(data.get(b"hits", 0)),
        )

    def get(self, key: str, now: float) -> Entry | None:
        # cast: redis-py types replies as bytes | str; without decode_responses they are bytes
        data = cast("dict[bytes, bytes]", self.db.hgetall(self._k("e", key)))
        if not data or float(data[b"expires"]) <= now:
            return None
        return self._entry(data)

    def neighbours(self, context_key: str, now: float) -> list[Candidate]:
        keys = [k.decode() for k in cast("set[bytes]", self.db.smembers(self._k("c", context_key)))]
        if not keys:
            return []
        pipe = self.db.pipeline()
        for key in keys:
            pipe.hmget(self._k("e", key), "question", "embedding", "expires")
        out, gone = [], []
        for key, (question, embedding, expires) in zip(keys, pipe.execute(), strict=True):
            if expires is None or float(expires) <= now:
                gone.append(key)
            elif embedding:
                out.append(Candidate(key, question.decode(), embedding))
        if gone:  # expired by Redis: drop them from the neighbourhood's index too
            self.db.srem(self._k("c", context_key), *gone)
        return out

    def touch(self, key: str, now: float) -> None:
        pipe = self.db.pipeline()
        pipe.hincrby(self._k("e", key), "hits", 1)
        pipe.zadd(self._k("lru"), {key: now})
        pipe.incr(self._k("hits"))
        pipe.execute()

    def put(self, entry: Entry, max_entries: int) -> None:
        ttl_ms = max(int((entry.expires - entry.created) * 1000), 1)
        pipe = self.db.pipeline()
        pipe.hset(
            self._k("e", entry.key),
            mapping={
                "key": entry.key,
                "context_key": entry.context_key,
                "model": entry.model,
                "question": entry.question,
                "embedding": entry.embedding or b"",
                "response": json.dumps(entry.response),
                "created": entry.created,
                "expires": entry.expires,
                "hits": 0,
            },
        )
        pipe.pexpire(self._k("e", entry.key), ttl_ms)
        pipe.sadd(self._k("c", entry.context_key), entry.key)
        pipe.pexpire(self._k("c", entry.context_key), ttl_ms)  # renewed by each newer entry
        pipe.zadd(self._k("lru"), {entry.key: entry.created})
        pipe.zcard(self._k("lru"))
        count = pipe.execute()[-1]
        if count > max_entries:
            self._evict(count - max_entries)

    def _evict(self, n: int) -> None:
        for raw in cast("list[bytes]", self.db.zrange(self._k("lru"), 0, n - 1)):
            key = raw.decode()
            data = cast("list[bytes | None]", self.db.hmget(self._k("e", key), "context_key"))
            pipe = self.db.pipeline()
            pipe.delete(self._k("e", key))
            pipe.zrem(self._k("lru"), key)
            if data and data[0]:
                pipe.srem(self._k("c", data[0].decode()), key)
            pipe.execute()

    def clear(self) -> int:
        keys = list(self.db.scan_iter(match=self.prefix + "*", count=1000))
        entries = sum(1 for k in keys if k.decode().startswith(self._k("e", "")))
        for i in range(0, len(keys), 500):
            self.db.delete(*keys[i : i + 500])
        return entries

    def stats(self, now: float) -> CacheStats:
        # Entries that Redis expired stay in the LRU index until evicted; count live ones.
        live = sum(1 for _ in self.db.scan_iter(match=self._k("e", "*"), count=1000))
        hits = int(self.db.get(self._k("hits")) or 0)
        return CacheStats(entries=live, hits=hits, backend=self.name, details={"url": self.url})
