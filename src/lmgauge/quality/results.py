"""What a quality run produces, and how its rows are kept in the SQLite store so a run can resume.

A `Row` is one configuration measured against the reference: a weight variant with the f16 KV
cache, or the reference weights with a quantized KV cache. Rows are stored under a key that
names everything their figures depend on (reference file, corpus, window, chunks, top-k,
benchmark settings, imatrix); running the same command again reuses every stored row and
measures only the missing ones (`--fresh` measures everything again). A row stored by a
`--no-speed` run gets its speed and memory measured when a later run asks for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..store import Store

DDL = [
    """
    CREATE TABLE IF NOT EXISTS quality_rows (
        key TEXT NOT NULL,                -- sha256 of what the figures depend on (see results.py)
        label TEXT NOT NULL,              -- e.g. "Q4_K_M" or "reference+q8_0"
        ts REAL NOT NULL,
        data TEXT NOT NULL,               -- JSON: one Row
        PRIMARY KEY (key, label)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS quality_runs (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        model TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        status TEXT NOT NULL,             -- running | complete | interrupted | failed
        report TEXT                       -- JSON: the whole report when finished
    )
    """,
]


@dataclass
class Row:
    label: str  # "reference", "Q4_K_M", "reference+q8_0"
    weights: str  # quantization type of the file ("Q4_1", "Q4_K_M", ...)
    kv_type: str
    path: str
    file_size: int
    bits_per_weight: float
    is_reference: bool = False
    # quality (stats.Agreement.to_dict(); for the reference row: its own perplexity)
    quality: dict[str, Any] = field(default_factory=dict)
    # speed and memory (the bench code, `num_ctx` = the run's ctx)
    prefill_tps: float | None = None
    decode_tps: float | None = None
    rss_bytes: int | None = None  # measured: engine process RSS growth from load to the last request
    rss_estimate_bytes: int | None = None  # sizing.estimate for the same window and KV type
    bench_run_id: str | None = None
    eval_seconds: float | None = None
    quantize_seconds: float | None = None  # None: reused from the cache or not quantized

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def kld_mean(self) -> float:
        if self.is_reference and self.kv_type == "f16":
            return 0.0
        return float(self.quality.get("kld_mean", {}).get("value", float("nan")))


def results_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class QualityStore:
    def __init__(self, store: Store):
        self.store = store
        store.ensure(DDL)

    def rows(self, key: str) -> dict[str, Row]:
        with self.store.connect() as db:
            found = db.execute("SELECT label, data FROM quality_rows WHERE key = ?", (key,)).fetchall()
        return {r["label"]: Row.from_dict(json.loads(r["data"])) for r in found}

    def put(self, key: str, row: Row) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO quality_rows (key, label, ts, data) VALUES (?,?,?,?)",
                (key, row.label, time.time(), json.dumps(row.to_dict())),
            )

    def forget(self, key: str) -> None:
        with self.store.connect() as db:
            db.execute("DELETE FROM quality_rows WHERE key = ?", (key,))

    def begin(self, run_id: str, key: str, model: str) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO quality_runs (id, key, model, started, status) VALUES (?,?,?,?,?)",
                (run_id, key, model, time.time(), "running"),
            )

    def finish(self, run_id: str, status: str, report: dict[str, Any] | None) -> None:
        with self.store.connect() as db:
            db.execute(
                "UPDATE quality_runs SET finished=?, status=?, report=? WHERE id=?",
                (time.time(), status, json.dumps(report, default=str) if report else None, run_id),
            )
