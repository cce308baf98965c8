"""What a benchmark run produces, and how runs are kept in the SQLite store.

A `Run` is one invocation of `lmgauge bench` (kind "bench"), `lmgauge bench --ctx-sweep`
("sweep") or `lmgauge load` ("load"): its configuration, the machine it ran on, what was
measured about each model (engine, version, file hash, memory), and one `Sample` per request
(raw values, never only aggregates). Summaries are computed from the samples on demand
(`summarize_run`), so a stored run can be re-summarized or compared later.

Samples are written to the store as they are measured: a run interrupted by Ctrl-C (or killed)
keeps everything measured so far.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError
from ..models import file_sha256
from ..stats import Summary, pooled_itl, summarize, tpot_ms
from ..store import Store
from ..types import Result

SCHEMA_VERSION = 1

DDL = [
    """
    CREATE TABLE IF NOT EXISTS bench_runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,               -- bench | sweep | load
        status TEXT NOT NULL,             -- running | complete | interrupted
        started REAL NOT NULL,            -- unix time
        finished REAL,
        models TEXT NOT NULL,             -- comma-separated, for listing
        config TEXT NOT NULL,             -- JSON
        machine TEXT NOT NULL,            -- JSON
        model_info TEXT NOT NULL,         -- JSON: per model engine, version, sha256, memory
        analysis TEXT                     -- JSON: sweep fit, load levels and saturation
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS bench_samples (
        run_id TEXT NOT NULL REFERENCES bench_runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        data TEXT NOT NULL,               -- JSON: one Sample
        PRIMARY KEY (run_id, seq)
    )
    """,
    "CREATE INDEX IF NOT EXISTS bench_runs_started ON bench_runs(started)",
    # Hashing a multi-GB model file takes seconds: remember it per (path, size, mtime).
    """
    CREATE TABLE IF NOT EXISTS bench_file_hashes (
        path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (path, size, mtime_ns)
    )
    """,
]

# The per-request metrics summarized for every group, in table order. ITL is pooled separately.
METRICS = (
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "decode_tps",
    "prefill_tps",
    "prompt_tokens",
    "output_tokens",
    "cached_tokens",
    "engine_tpot_ms",
    "engine_prefill_ms",
    "load_ms",
    "engine_rss_bytes",
    "spec_acceptance",
    "spec_mean_accepted",
    "spec_draft_ms",
    "spec_verify_ms",
)


@dataclass
class Sample:
    """One measured request. Times in ms, client clock unless named engine_*; None where
    undefined (TPOT with one output token) or not reported (a server without counts)."""

    run_id: str
    seq: int
    model: str
    prompt: str  # prompt name ("short", a file's entry) or "ctx-4096" in a sweep
    rep: int  # repetition index within its group (warmups are never recorded)
    status: str = "ok"  # ok | error | skipped | cancel
    error: str | None = None
    done_reason: str | None = None
    ctx: int | None = None  # sweep: the targeted filled context
    level: str | None = None  # load: "c=4" (concurrency) or "rate=2" (requests/s)
    t_start_s: float | None = None  # seconds since the run (or load level) started
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    engine_prefill_ms: float | None = None
    engine_decode_ms: float | None = None
    engine_tpot_ms: float | None = None  # engine clock: decode time / (output_tokens - 1)
    load_ms: float | None = None
    engine_rss_bytes: int | None = None
    queue_delay_ms: float | None = None  # load, open loop: scheduled arrival -> actually sent
    tokens_from: str = "engine"  # engine: the engine's counts; chunks: a server that reports none
    # Speculative decoding (embedded engine, when the model speculates): accepted / drafted,
    # drafted tokens accepted per speculative step, time drafting and verifying (engine clock).
    spec_mode: str | None = None  # "lookup" | "draft"
    spec_acceptance: float | None = None
    spec_mean_accepted: float | None = None
    spec_draft_ms: float | None = None
    spec_verify_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)

    @classmethod
    def from_result(cls, result: Result, **kw: Any) -> Sample:
        t = result.timings
        engine_tpot = t.engine_tpot_ms
        output_tokens, tokens_from = t.output_tokens, "engine"
        if not output_tokens and t.chunk_ns:
            # A server that streams without token counts (llama-cpp-python's server ignores
            # stream_options.include_usage): count the streamed chunks, one token each on llama.cpp
            # servers, and say so, rather than report no TPOT at all.
            output_tokens, tokens_from = len(t.chunk_ns), "chunks"
        tpot = tpot_ms(t.ttft_ms, t.e2e_ms, output_tokens)
        spec = t.speculation
        if spec is not None:
            kw.update(
                spec_mode=spec.mode,
                spec_acceptance=spec.acceptance_rate,
                spec_mean_accepted=spec.mean_accepted,
                spec_draft_ms=spec.draft_ns / 1e6,
                spec_verify_ms=spec.verify_ns / 1e6,
            )
        return cls(
            **kw,
            done_reason=result.done_reason,
            ttft_ms=t.ttft_ms,
            tpot_ms=tpot,
            e2e_ms=t.e2e_ms,
            prompt_tokens=t.prompt_tokens or None,
            cached_tokens=t.cached_tokens,
            output_tokens=output_tokens,
            tokens_from=tokens_from,
            prefill_tps=t.prefill_tps,
            decode_tps=t.decode_tps,
            engine_prefill_ms=None if t.prompt_eval_ns is None else t.prompt_eval_ns / 1e6,
            engine_decode_ms=None if t.eval_ns is None else t.eval_ns / 1e6,
            engine_tpot_ms=engine_tpot,
            load_ms=t.load_ns / 1e6,
            itl_ms=t.itl_ms,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


SAMPLE_FIELDS = [f.name for f in dataclasses.fields(Sample)]


@dataclass
class Run:
    id: str
    kind: str  # bench | sweep | load
    config: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> what was measured
    samples: list[Sample] = field(default_factory=list)
    analysis: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]

    @property
    def model_names(self) -> list[str]:
        return list(dict.fromkeys([*self.config.get("models", []), *self.models]))

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "config": self.config,
            "machine": self.machine,
            "models": self.models,
            "summary": summarize_run(self),
            "analysis": self.analysis,
        }
        if with_samples:
            out["samples"] = [s.to_dict() for s in self.samples]
        return out


# --- summaries ---------------------------------------------------------------------------------


def group_key(sample: Sample) -> tuple[str, str]:
    """Samples are summarized per model and per prompt / context size / load level."""
    return sample.model, sample.level or sample.prompt


def summarize_run(run: Run) -> list[dict[str, Any]]:
    """Per (model, group): counts by status, a Summary of every metric over the successful
    requests, and the ITL pooled across them. Order: as first measured."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in run.samples:
        groups.setdefault(group_key(s), []).append(s)
    out = []
    for (model, group), samples in groups.items():
        ok = [s for s in samples if s.status == "ok"]
        entry: dict[str, Any] = {
            "model": model,
            "group": group,
            "n": len(samples),
            "ok": len(ok),
            "errors": sum(s.status == "error" for s in samples),
            "skipped": sum(s.status == "skipped" for s in samples),
            "cancelled": sum(s.status == "cancel" for s in samples),
            "ctx": samples[0].ctx,
            "level": samples[0].level,
            "metrics": {m: summarize([getattr(s, m) for s in ok]).to_dict() for m in METRICS},
        }
        entry["metrics"]["itl_ms"] = summarize(pooled_itl([s.itl_ms for s in ok])).to_dict()
        out.append(entry)
    return out


def metric(entry: dict[str, Any], name: str, stat: str = "p50") -> float | None:
    """One statistic of a summarized group, e.g. metric(g, "ttft_ms", "p90")."""
    return entry["metrics"].get(name, {}).get(stat)


def as_summary(data: dict[str, Any]) -> Summary:
    return Summary(**data)


# --- the store -----------------------------------------------------------------------------------


class RunStore:
    """Runs and their samples in lmgauge's SQLite database (tables bench_runs, bench_samples)."""

    def __init__(self, store: Store):
        self.store = store
        store.ensure(DDL)

    def begin(self, run: Run) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO bench_runs (id, kind, status, started, finished, models, config,"
                " machine, model_info, analysis) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run.id,
                    run.kind,
                    run.status,
                    run.started,
                    run.finished,
                    ",".join(run.model_names),
                    _dumps(run.config),
                    _dumps(run.machine),
                    _dumps(run.models),
                    _dumps(run.analysis),
                ),
            )

    def add_sample(self, sample: Sample) -> None:
        with self.store.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO bench_samples (run_id, seq, data) VALUES (?,?,?)",
                (sample.run_id, sample.seq, _dumps(sample.to_dict())),
            )

    def finish(self, run: Run) -> None:
        """Write the run's final state (status, models, analysis); samples are already in."""
        with self.store.connect() as db:
            db.execute(
                "UPDATE bench_runs SET status=?, finished=?, models=?, machine=?, model_info=?, analysis=? WHERE id=?",
                (
                    run.status,
                    run.finished,
                    ",".join(run.model_names),
                    _dumps(run.machine),
                    _dumps(run.models),
                    _dumps(run.analysis),
                    run.id,
                ),
            )

    def sha256(self, path: str) -> str:
        """models.file_sha256, remembered while the file is unchanged."""
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        with self.store.connect() as db:
            row = db.execute(
                "SELECT sha256 FROM bench_file_hashes WHERE path=? AND size=? AND mtime_ns=?", key
            ).fetchone()
        if row:
            return row["sha256"]
        digest = file_sha256(path)
        with self.store.connect() as db:
            db.execute("INSERT OR REPLACE INTO bench_file_hashes VALUES (?,?,?,?)", (*key, digest))
        return digest

    def list(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT r.id, r.kind, r.status, r.started, r.finished, r.models, "
            "(SELECT COUNT(*) FROM bench_samples s WHERE s.run_id = r.id) AS samples FROM bench_runs r"
        )
        args: list[Any] = []
        if kind:
            sql += " WHERE r.kind = ?"
            args.append(kind)
        sql += " ORDER BY r.started DESC LIMIT ?"
        with self.store.connect() as db:
            return [dict(row) for row in db.execute(sql, [*args, limit]).fetchall()]

    def resolve_id(self, ref: str) -> str:
        """A run id from an id, a unique prefix of one, `latest`, or `latest~N` (N runs back)."""
        ref = ref.strip()
        with self.store.connect() as db:
            if ref == "latest" or ref.startswith("latest~"):
                back = ref.partition("~")[2]
                if back and not back.isdigit():
                    raise InvalidOptionError(f"run {ref!r}: write latest~N with N a number")
                row = db.execute(
                    "SELECT id FROM bench_runs ORDER BY started DESC LIMIT 1 OFFSET ?", (int(back or 0),)
                ).fetchone()
                if row is None:
                    raise InvalidOptionError(f"no stored run for {ref!r}; run `lmgauge bench` first")
                return row["id"]
            rows = db.execute(
                "SELECT id FROM bench_runs WHERE id LIKE ? ORDER BY started DESC LIMIT 5", (ref.replace("%", "") + "%",)
            ).fetchall()
        if not rows:
            raise InvalidOptionError(f"no stored run {ref!r}; `lmgauge runs` lists them")
        if len(rows) > 1 and rows[0]["id"] != ref:
            raise InvalidOptionError(f"run {ref!r} is ambiguous: {', '.join(r['id'] for r in rows)}")
        return rows[0]["id"]

    def load(self, ref: str) -> Run:
        run_id = self.resolve_id(ref)
        with self.store.connect() as db:
            row = db.execute("SELECT * FROM bench_runs WHERE id = ?", (run_id,)).fetchone()
            samples = db.execute("SELECT data FROM bench_samples WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        return Run(
            id=row["id"],
            kind=row["kind"],
            status=row["status"],
            started=row["started"],
            finished=row["finished"],
            config=json.loads(row["config"]),
            machine=json.loads(row["machine"]),
            models=json.loads(row["model_info"]),
            analysis=json.loads(row["analysis"] or "{}"),
            samples=[Sample.from_dict(json.loads(r["data"])) for r in samples],
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
