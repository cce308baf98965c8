"""`lmgauge quality`: the whole run, from choosing the reference to the verdicts.

    settings = load_settings()
    report = run_quality(settings, QualityConfig(model="smollm2"), Store(settings.db_path))

Order of work (each row is stored as soon as it is complete, so Ctrl-C or a crash loses at most
the row in progress; the reference's distributions are kept chunk by chunk):
  1. the reference file (variants.choose_reference), the corpus and its chunks;
  2. the reference pass, f16 KV cache: its perplexity, its compressed distributions to disk;
  3. each weight variant (quantized from the reference, cached) with the f16 KV cache, then the
     reference weights with each quantized KV type: perplexity, KLD, top-1 agreement;
  4. for every row, speed and memory with the bench code (`run_bench`: warmup excluded, reps,
     temperature 0, nonce against prefix caching) at the same window, and the sizing estimate;
  5. verdicts per memory budget (report.verdicts).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.machine import describe_machine
from ..bench.prompts import builtin_prompts
from ..bench.results import RunStore
from ..bench.runner import BenchConfig, run_bench
from ..client import Client
from ..config import Settings
from ..engines.llamacpp import KV_TYPES
from ..errors import EngineError, InvalidOptionError
from ..models import inspect_gguf, resolve
from ..sizing import estimate
from ..store import Store
from . import corpus as corpus_mod
from . import stats
from .reference import ReferenceKey, ReferenceStore
from .report import verdicts
from .results import QualityStore, Row, results_key
from .scorer import Scorer
from .variants import FTYPES, Reference, bits_per_weight, choose_reference, load_imatrix, quantize, variant_folder

Progress = Callable[[str, int, int], None]  # (what is running, units done, units planned)

DEFAULT_VARIANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")
DEFAULT_KV_TYPES = ("f16", "q8_0", "q4_0")
DEFAULT_CHUNKS = 4  # 1,020 scored tokens at --ctx 512: the mean KLD to ~5%, top-1 to ~1 point (shown as ±)
DEFAULT_REPS = 3  # speed benchmark repetitions per row (medians; a first look, not `lmgauge bench`)
DEFAULT_TOP_K = 64
BENCH_PROMPT = "medium"  # ~300 prompt tokens, then decoding: both phases, fits a 512-token window


@dataclass
class QualityConfig:
    model: str
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    kv_types: list[str] = field(default_factory=lambda: list(DEFAULT_KV_TYPES))
    reference: str | None = None
    text: str | None = None
    ctx: int = 512
    chunks: int | None = DEFAULT_CHUNKS  # None: every chunk the text gives
    top_k: int = DEFAULT_TOP_K
    imatrix: str | None = None
    speed: bool = True  # measure speed and memory with the bench code, at num_ctx = ctx
    reps: int = DEFAULT_REPS
    warmup: int = 1
    num_predict: int = 64
    budgets: list[int] | None = None  # bytes; None: chosen from the rows' estimates
    budget_ctx: int | None = None  # the window the verdicts size for; None: min(8192, trained)
    fresh: bool = False

    def validate(self) -> None:
        for kv in self.kv_types:
            if kv not in KV_TYPES:
                raise InvalidOptionError(f"--kv-types: unknown type {kv!r}; use some of {', '.join(KV_TYPES)}")
        for v in self.variants:
            if v not in FTYPES:
                raise InvalidOptionError(f"--variants: unknown type {v!r}; use some of {', '.join(FTYPES)}")
        if self.ctx < 16 or self.ctx % 2:
            raise InvalidOptionError(f"--ctx must be an even number of tokens >= 16 (got {self.ctx})")
        if self.top_k < 1:
            raise InvalidOptionError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.reps < 1 or self.warmup < 0:
            raise InvalidOptionError("--reps must be at least 1 and --warmup at least 0")
        if self.chunks is not None and self.chunks < 1:
            raise InvalidOptionError(f"--chunks must be at least 1 (got {self.chunks})")


def run_quality(
    settings: Settings, config: QualityConfig, store: Store | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Measure every row (reusing stored ones) and return the report (see report.py)."""
    t_start = time.perf_counter()
    config.validate()
    ref_model = resolve(config.model, settings)
    if ref_model.engine != "llamacpp":
        raise InvalidOptionError(
            f"{config.model} is served by {ref_model.engine}; `lmgauge quality` quantizes "
            "and evaluates GGUF files on the embedded engine: name a local model or a .gguf file"
        )
    reference = choose_reference(ref_model.target, settings, config.reference)
    text = corpus_mod.load(config.text)
    imatrix = load_imatrix(config.imatrix) if config.imatrix else None
    st = Path(reference.path).stat()
    key = results_key(
        {
            "reference": reference.path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "corpus": text.sha256,
            "ctx": config.ctx,
            "chunks": config.chunks,
            "top_k": config.top_k,
            "reps": config.reps,
            "warmup": config.warmup,
            "num_predict": config.num_predict,
            "imatrix": config.imatrix,
            "threads": settings.threads,
            "version": 1,
        }
    )
    qstore = QualityStore(store) if store is not None else None
    runs = RunStore(store) if store is not None else None
    if qstore is not None and config.fresh:
        qstore.forget(key)
    stored = qstore.rows(key) if qstore is not None else {}
    run_id = uuid.uuid4().hex[:12]
    if qstore is not None:
        qstore.begin(run_id, key, config.model)

    ref_store = ReferenceStore(
        settings.home / "quality" / "reference",
        ReferenceKey(reference.path, st.st_size, st.st_mtime_ns, text.sha256, config.ctx, config.top_k),
    )
    plan = _plan(reference, config)
    bench_units = (config.warmup + config.reps) if config.speed else 0
    chunks_estimate = config.chunks or 1
    total = len(plan) * (chunks_estimate + bench_units)
    done = 0
    state: dict[str, Any] = {"chunks": None}
    rows: list[Row] = []
    notes: list[str] = []
    status = "failed"

    def tick(label: str, units: int = 1) -> None:
        nonlocal done
        done += units
        if progress:
            progress(label, done, total)

    try:
        for label, weights, kv in plan:
            if label in stored and not config.fresh:
                row = stored[label]
                tick(f"{label}: stored", chunks_estimate)
                if config.speed and row.decode_tps is None:  # stored by a --no-speed run: measure it now
                    _measure_speed(settings, row, config, runs, tick)
                    if qstore is not None:
                        qstore.put(key, row)
                else:
                    tick(f"{label}: stored", bench_units)
                rows.append(row)
                continue
            row, path = _prepare_row(settings, reference, label, weights, kv, config, imatrix, notes)
            t_eval = time.perf_counter()
            if row.is_reference and kv == "f16":
                row.quality = _reference_pass(path, config, text, ref_store, state, tick, label)
            else:
                if state["chunks"] is None:  # the reference row was stored: make sure its chunks are on disk
                    _reference_pass(reference.path, config, text, ref_store, state, lambda *_: None, "reference")
                row.quality = _variant_pass(path, kv, config, text, ref_store, state, tick, label)
            row.eval_seconds = time.perf_counter() - t_eval
            if config.speed:
                _measure_speed(settings, row, config, runs, tick)
            if qstore is not None:
                qstore.put(key, row)
            rows.append(row)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if qstore is not None and status != "complete":
            qstore.finish(run_id, status, None)

    chunks = state["chunks"]
    info = reference.info
    per_chunk = config.ctx - 1 - config.ctx // 2
    # every row was stored: the chunk count follows from the tokens each row scored
    scored = chunks.count * chunks.scored_per_chunk if chunks else (rows[0].quality.get("n") if rows else None)
    n_chunks = chunks.count if chunks else (scored // per_chunk if scored else None)
    report: dict[str, Any] = {
        "id": run_id,
        "model": config.model,
        "reference": {
            "path": reference.path,
            "quantization": info.quantization,
            "bits_per_weight": bits_per_weight(info),
            "why": reference.why,
            "n_vocab": info.n_vocab,
            "parameters": info.parameters,
        },
        "corpus": {
            "label": text.label,
            "sha256": text.sha256,
            "chunks": n_chunks,
            "chunks_available": chunks.available if chunks else None,
            "scored_tokens": scored,
        },
        "config": {k: v for k, v in asdict(config).items() if k not in ("fresh",)},
        "reference_logits": _reference_cost(ref_store, n_chunks or 0, info.n_vocab, config),
        "rows": [r.to_dict() for r in rows],
        "notes": notes,
        "machine": describe_machine(),
        "wall_seconds": time.perf_counter() - t_start,
        "resumed_rows": [r.label for r in rows if r.label in stored and not config.fresh],
    }
    budget_ctx = config.budget_ctx or min(8192, info.n_ctx_train or 8192)
    report["verdicts"] = verdicts(rows, config.budgets, budget_ctx)
    report["budget_ctx"] = budget_ctx
    if qstore is not None:
        qstore.finish(run_id, "complete", report)
    if progress:
        progress("done", total, total)
    return report


def _plan(reference: Reference, config: QualityConfig) -> list[tuple[str, str, str]]:
    """(label, weights, kv_type) per row: the reference, the variants, the reference's KV types."""
    ref_type = reference.info.quantization
    plan = [(f"{ref_type} (reference)", "reference", "f16")]
    for v in config.variants:
        if v != ref_type:
            plan.append((v, v, "f16"))
    for kv in config.kv_types:
        if kv != "f16":
            plan.append((f"{ref_type} (reference), KV {kv}", "reference", kv))
    return plan


def _prepare_row(
    settings: Settings,
    reference: Reference,
    label: str,
    weights: str,
    kv: str,
    config: QualityConfig,
    imatrix: dict[str, list[float]] | None,
    notes: list[str],
) -> tuple[Row, str]:
    quantize_seconds = None
    if weights == "reference":
        path = reference.path
    else:
        suffix = "-imatrix" if imatrix else ""
        path_obj = variant_folder(settings, reference) / f"{weights}{suffix}.gguf"
        if not path_obj.exists():
            t0 = time.perf_counter()
            quantize(reference.path, weights, path_obj, imatrix, settings.threads)
            quantize_seconds = time.perf_counter() - t0
        path = str(path_obj)
    info = inspect_gguf(path)
    row = Row(
        label=label,
        weights=info.quantization,
        kv_type=kv,
        path=path,
        file_size=info.file_size,
        bits_per_weight=bits_per_weight(info),
        is_reference=weights == "reference",
        quantize_seconds=quantize_seconds,
    )
    return row, path


def _chunks_for(
    scorer: Scorer, config: QualityConfig, text: corpus_mod.Corpus, state: dict[str, Any]
) -> corpus_mod.Chunks:
    chunks = corpus_mod.make_chunks(scorer.tokenize(text.text), config.ctx, config.chunks, scorer.bos)
    known = state.get("chunks")
    if known is not None and not np.array_equal(known.tokens, chunks.tokens):
        raise InvalidOptionError(
            f"{scorer.path} tokenizes the text differently from the reference; "
            "quality compares files of the same model only"
        )
    state["chunks"] = chunks
    return chunks


def _reference_pass(
    path: str,
    config: QualityConfig,
    text: corpus_mod.Corpus,
    ref_store: ReferenceStore,
    state: dict[str, Any],
    tick: Callable[[str, int], None],
    label: str,
) -> dict[str, Any]:
    nll_all = []
    with Scorer(path, config.ctx, "f16") as scorer:
        chunks = _chunks_for(scorer, config, text, state)
        for i in range(chunks.count):
            if ref_store.has(i):
                _, nll = ref_store.read(i)
            else:
                logp = stats.log_softmax(scorer.chunk_logits(chunks.tokens[i], chunks.first))
                nxt = chunks.next_tokens(i)
                nll = stats.token_nll(logp, nxt)
                ref_store.write(i, stats.compress(logp, nxt, config.top_k), nll)
                del logp
            nll_all.append(nll)
            tick(f"{label} · chunk {i + 1}/{chunks.count}", 1)
    nll = np.concatenate(nll_all)
    return {"n": len(nll), "ppl": stats.perplexity(nll).to_dict()}


def _variant_pass(
    path: str,
    kv: str,
    config: QualityConfig,
    text: corpus_mod.Corpus,
    ref_store: ReferenceStore,
    state: dict[str, Any],
    tick: Callable[[str, int], None],
    label: str,
) -> dict[str, Any]:
    nll_all, ref_nll_all, kld_all, top_all = [], [], [], []
    with Scorer(path, config.ctx, kv) as scorer:
        chunks = _chunks_for(scorer, config, text, state)
        for i in range(chunks.count):
            if not ref_store.has(i):
                raise InvalidOptionError(
                    f"the reference's distributions for chunk {i} are missing from "
                    f"{ref_store.folder}; run again to recompute them"
                )
            ref, ref_nll = ref_store.read(i)
            logp = stats.log_softmax(scorer.chunk_logits(chunks.tokens[i], chunks.first))
            nll_all.append(stats.token_nll(logp, chunks.next_tokens(i)))
            ref_nll_all.append(ref_nll)
            kld_all.append(stats.kld_compressed(ref, logp))
            top_all.append(stats.same_top(ref, logp))
            del logp
            tick(f"{label} · chunk {i + 1}/{chunks.count}", 1)
    agreement = stats.agreement(
        np.concatenate(nll_all), np.concatenate(ref_nll_all), np.concatenate(kld_all), np.concatenate(top_all)
    )
    return agreement.to_dict()


def _measure_speed(
    settings: Settings, row: Row, config: QualityConfig, runs: RunStore | None, tick: Callable[[str, int], None]
) -> None:
    """Prefill/decode tok/s and memory of this file + KV type with the bench code, and the
    sizing estimate for the same window."""
    bench_settings = settings.model_copy(update={"kv_type": row.kv_type, "parallel": 1, "keep_alive": -1})
    # the built-in "medium" prompt (~300 tokens) where the window holds it, else "short" (~40)
    prompt = builtin_prompts()[BENCH_PROMPT if config.ctx >= 512 else "short"]
    bench = BenchConfig(
        models=[row.path],
        prompts=[prompt],
        reps=config.reps,
        warmup=config.warmup,
        num_predict=config.num_predict,
        num_ctx=config.ctx,
    )
    seen = 0

    def on_progress(what: str, n_done: int, n_total: int) -> None:
        nonlocal seen
        if n_done > seen:
            tick(f"{row.label} · speed · {what.split(' · ')[-1]}", n_done - seen)
            seen = n_done

    with Client(settings=bench_settings) as client:
        run = run_bench(client, bench, runs, progress=on_progress)
    ok = [s for s in run.samples if s.status == "ok"]
    errors = [s.error for s in run.samples if s.status != "ok"]
    if not ok:
        raise EngineError(f"the speed benchmark of {row.label} failed: {errors[0] if errors else 'no samples'}")
    row.prefill_tps = float(np.median([s.prefill_tps for s in ok if s.prefill_tps is not None]))
    row.decode_tps = float(np.median([s.decode_tps for s in ok if s.decode_tps is not None]))
    model_info = run.models.get(row.path, {})
    row.rss_bytes = (model_info.get("memory") or {}).get("rss_growth_bytes")
    est = estimate(inspect_gguf(row.path), config.ctx, kv_type=row.kv_type)
    row.rss_estimate_bytes = est.total_bytes
    row.bench_run_id = run.id


def _reference_cost(ref_store: ReferenceStore, count: int, n_vocab: int, config: QualityConfig) -> dict[str, Any]:
    """What the reference's distributions take on disk, beside what llama-perplexity's
    --kl-divergence-base file would (uint16 per vocabulary entry + 4 header values, per scored token)."""
    scored = count * (config.ctx - 1 - config.ctx // 2)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    out = ref_store.describe(count)
    out["scored_tokens"] = scored
    out["bytes_per_token"] = out["disk_bytes"] / scored if scored else None
    out["llama_perplexity_bytes"] = scored * nv * 2 + count * config.ctx * 4
    return out
