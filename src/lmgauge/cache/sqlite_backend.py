"""The cache on SQLite: the lmgauge store's `response_cache` table (one file, WAL)."""

from __future__ import annotations

import json
from typing import Any

from .backend import CacheStats, Candidate, Entry

CACHE_DDL = [
    """
    CREATE TABLE IF NOT EXISTS response_cache (
        key TEXT PRIMARY KEY,
        context_key TEXT NOT NULL,
        model TEXT NOT NULL,
        question TEXT NOT NULL,
        embedding BLOB,                -- float32 unit vector of the question
        response TEXT NOT NULL,        -- JSON: content, done_reason, tool_calls, engine, token counts
        created REAL NOT NULL,
        expires REAL NOT NULL,
        last_used REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS response_cache_context ON response_cache(context_key)",
    "CREATE INDEX IF NOT EXISTS response_cache_lru ON response_cache(last_used)",
]


class SQLiteBackend:
    """The lmgauge store's `response_cache` table (one file, WAL; good for one machine)."""

    name = "sqlite"

    def __init__(self, store: Any):
        self.store = store
        store.ensure(CACHE_DDL)

    @staticmethod
    def _entry(row: Any) -> Entry:
        return Entry(
            key=row["key"],
            context_key=row["context_key"],
            model=row["model"],
            question=row["question"],
            embedding=row["embedding"],
            response=json.loads(row["response"]),
            created=row["created"],
            expires=row["expires"],
            hits=row["hits"],
        )

    def get(self, key: str, now: float) -> Entry | None:
        with self.store.connect() as db:
            row = db.execute("SELECT * FROM response_cache WHERE key = ? AND expires > ?", (key, now)).fetchone()
        return self._entry(row) if row else None

    def neighbours(self, context_key: str, now: float) -> list[Candidate]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT key, question, embedding FROM response_cache WHERE context_key = ? "
                "AND expires > ? AND embedding IS NOT NULL",
                (context_key, now),
            ).fetchall()
        return [Candidate(r["key"], r["question"], r["embedding"]) for r in rows]

    def touch(self, key: str, now: float) -> None:
        with self.store.connect() as db:
            db.execute("UPDATE response_cache SET hits = hits + 1, last_used = ? WHERE key = ?", (now, key))

    def put(self, entry: Entry, max_entries: int) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO response_cache (key, context_key, model, question, embedding, response,"
                " created, expires, last_used, hits) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    entry.key,
                    entry.context_key,
                    entry.model,
                    entry.question,
                    entry.embedding,
                    json.dumps(entry.response),
                    entry.created,
                    entry.expires,
                    entry.created,
                ),
            )
            db.execute("DELETE FROM response_cache WHERE expires <= ?", (entry.created,))
            (count,) = db.execute("SELECT COUNT(*) FROM response_cache").fetchone()
            if count > max_entries:
                db.execute(
                    "DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache "
                    "ORDER BY last_used ASC LIMIT ?)",
                    (count - max_entries,),
                )

    def clear(self) -> int:
        with self.store.connect() as db:
            return db.execute("DELETE FROM response_cache").rowcount

    def stats(self, now: float) -> CacheStats:
        with self.store.connect() as db:
            n, hits = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(hits), 0) FROM response_cache WHERE expires > ?", (now,)
            ).fetchone()
        return CacheStats(entries=n, hits=hits, backend=self.name, details={"path": str(self.store.path)})
