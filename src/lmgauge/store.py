"""One SQLite database for everything lmgauge remembers: request log, benchmark runs, memories,
cache. WAL mode, so readers never block the writer and a killed writer loses nothing committed.

The request log's table is declared here; every other feature keeps its own DDL and queries next
to its code and calls `Store.ensure(its_schema)` (idempotent CREATE ... IF NOT EXISTS) before use.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS request_log (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,                 -- unix time the request finished
        source TEXT NOT NULL,             -- cli | gateway | bench | batch | library
        model TEXT NOT NULL,
        engine TEXT,
        status TEXT NOT NULL,             -- ok | error | cancel
        error TEXT,
        done_reason TEXT,
        prompt_tokens INTEGER,
        cached_tokens INTEGER,
        output_tokens INTEGER,
        ttft_ms REAL,
        tpot_ms REAL,
        e2e_ms REAL,
        prefill_tps REAL,
        decode_tps REAL,
        load_ms REAL,
        upstream TEXT,
        cache_hit INTEGER DEFAULT 0,
        compacted INTEGER DEFAULT 0,
        extra TEXT                        -- JSON: anything else worth keeping
    )
    """,
    "CREATE INDEX IF NOT EXISTS request_log_ts ON request_log(ts)",
    "CREATE INDEX IF NOT EXISTS request_log_model ON request_log(model, ts)",
]


# What the request log holds, for `lmgauge log --status/--source` (checked, so a typo is an error,
# not an empty list). Who writes each source: the gateway, `lmgauge run`/`route ask` (cli),
# `lmgauge chat` (chat), benchmarks (bench).
LOG_STATUSES = ("ok", "error", "timeout", "busy", "overflow", "invalid", "cancel", "skipped", "escalated")
LOG_SOURCES = ("gateway", "cli", "chat", "bench")


@dataclass
class RequestRecord:
    model: str
    source: str
    status: str = "ok"
    engine: str | None = None
    error: str | None = None
    done_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    load_ms: float | None = None
    upstream: str | None = None
    cache_hit: bool = False
    compacted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    @classmethod
    def from_result(cls, result: Any, source: str, **kw: Any) -> RequestRecord:
        """From a types.Result: the stats every request carries."""
        t = result.timings
        return cls(
            model=result.model,
            source=source,
            engine=result.engine,
            done_reason=result.done_reason,
            prompt_tokens=t.prompt_tokens,
            cached_tokens=t.cached_tokens,
            output_tokens=t.output_tokens,
            ttft_ms=t.ttft_ms,
            tpot_ms=t.tpot_ms,
            e2e_ms=t.e2e_ms,
            prefill_tps=t.prefill_tps,
            decode_tps=t.decode_tps,
            load_ms=t.load_ns / 1e6,
            **kw,
        )


def _row(record: RequestRecord) -> dict[str, Any]:
    row = dict(record.__dict__)
    row["extra"] = json.dumps(row["extra"], separators=(",", ":")) if row["extra"] else None
    row["cache_hit"] = int(row["cache_hit"])
    row["compacted"] = int(row["compacted"])
    return row


_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
_INSERT = f"INSERT INTO request_log ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})"


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._ensured: set[tuple[str, ...]] = set()
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in SCHEMA:
                db.execute(statement)

    def ensure(self, statements: list[str]) -> None:
        """Apply a feature's DDL (CREATE TABLE/INDEX IF NOT EXISTS ...) once per Store."""
        key = tuple(statements)
        if key in self._ensured:
            return
        with self.connect() as db:
            for statement in statements:
                db.execute(statement)
        self._ensured.add(key)

    def add_columns(self, table: str, columns: dict[str, str]) -> None:
        """Additive migration: add the columns a database made by an older lmgauge lacks
        (`{"subject": "TEXT NOT NULL DEFAULT 'user'"}`); existing rows get the default. Run
        under the write lock, so two processes migrating at once do not both add a column."""
        key = ("add_columns", table, *sorted(columns.items()))
        if tuple(map(str, key)) in self._ensured:
            return
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for name, ddl in columns.items():
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
        self._ensured.add(tuple(map(str, key)))

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A per-thread connection; commits on success, rolls back on error."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        try:
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def log_request(self, record: RequestRecord) -> int:
        row = _row(record)
        with self.connect() as db:
            row_id = db.execute(_INSERT, row).lastrowid
        assert row_id is not None  # set by every INSERT
        return row_id

    def log_requests(self, records: list[RequestRecord]) -> None:
        """Many rows in one transaction (the gateway's log writer batches what accumulated)."""
        with self.connect() as db:
            db.executemany(_INSERT, [_row(r) for r in records])

    def requests(
        self,
        model: str | None = None,
        status: str | None = None,
        source: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Newest first, filtered."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("model", model), ("status", status), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = "SELECT * FROM request_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        with self.connect() as db:
            rows = db.execute(sql, [*args, limit]).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["extra"] = json.loads(d["extra"]) if d["extra"] else {}
            out.append(d)
        return out
