"""`lmgauge eval cache`: does the semantic cache answer paraphrases and refuse near misses?

The labeled pairs (src/lmgauge/data/cache_pairs.jsonl) hold a cached question `a` and a later
question `b`: paraphrases (b should get a's answer) and near misses that must not (a negation
added, a number or a named thing changed). Each pair runs through the real ResponseCache on a
real backend: `a` is stored, `b` is looked up. Every pair gets its own conversation context
(a system message naming the pair), so pairs cannot answer each other.

Reported: paraphrase hit rate and near-miss false-hit rate (overall, per split and per kind) at
the configured similarity threshold, a sweep over thresholds, and exact-hit lookup latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from ..stats import summarize
from ..types import ChatRequest, Message, Options, Result, Timings
from .guard import guard_mismatch
from .response import ResponseCache


@dataclass(frozen=True)
class Pair:
    id: str
    kind: str  # paraphrase | negation | number | entity
    should_hit: bool
    split: str
    a: str
    b: str


def load_pairs(split: str | None = None) -> list[Pair]:
    text = resources.files("lmgauge").joinpath("data/cache_pairs.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [
        Pair(r["id"], r["kind"], r["should_hit"], r["split"], r["a"], r["b"])
        for r in rows
        if split is None or r["split"] == split
    ]


def _request(pair: Pair, question: str) -> ChatRequest:
    return ChatRequest(
        model="eval",
        messages=[Message("system", f"pair {pair.id}"), Message("user", question)],
        options=Options(temperature=0),
    )


def _answer(text: str) -> Result:
    return Result(model="eval", content=text, done_reason="stop", timings=Timings(output_tokens=1))


@dataclass
class PairOutcome:
    pair: Pair
    hit: bool
    similarity: float  # cosine similarity of a and b
    guard: str | None  # why the guards refused, if they did


def run_pairs(cache: ResponseCache, pairs: list[Pair], progress: Callable[[], None] | None = None) -> list[PairOutcome]:
    """Store a, look up b, through the cache's real code path."""
    assert cache.embedder is not None, "the pair evaluation needs the semantic cache on"
    out = []
    for pair in pairs:
        cache.store(_request(pair, pair.a), _answer(f"answer to {pair.id}"))
        hit = cache.lookup(_request(pair, pair.b))
        va, vb = cache.embedder.embed([pair.a, pair.b])
        out.append(PairOutcome(pair, hit is not None, float(va @ vb), guard_mismatch(pair.a, pair.b, cache.embedder)))
        if progress is not None:
            progress()
    return out


def rates(outcomes: list[PairOutcome], threshold: float | None = None) -> dict[str, Any]:
    """Hit rate on paraphrases and false-hit rate on near misses. With a threshold, what the
    cache would do at that threshold (from the measured similarity and guard verdict)."""

    def hit(o: PairOutcome) -> bool:
        return o.hit if threshold is None else (o.similarity >= threshold and o.guard is None)

    para = [hit(o) for o in outcomes if o.pair.should_hit]
    near = [hit(o) for o in outcomes if not o.pair.should_hit]
    kinds = sorted({o.pair.kind for o in outcomes if not o.pair.should_hit})
    return {
        "paraphrase_hit_rate": float(np.mean(para)) if para else None,
        "false_hit_rate": float(np.mean(near)) if near else None,
        "paraphrases": len(para),
        "near_misses": len(near),
        "false_hits_by_kind": {k: int(sum(hit(o) for o in outcomes if o.pair.kind == k)) for k in kinds},
    }


def sweep(outcomes: list[PairOutcome], thresholds: list[float]) -> list[dict[str, Any]]:
    return [{"threshold": t, **rates(outcomes, t)} for t in thresholds]


def exact_hit_latency(cache: ResponseCache, n: int = 200, lookups: int = 1000) -> dict[str, Any]:
    """Store n answers, then time exact-hit lookups of them (ms per lookup, on this backend)."""
    requests = [
        ChatRequest(
            model="eval-latency",
            messages=[Message("user", f"question number {i}: what is {i} + {i}?")],
            options=Options(temperature=0),
        )
        for i in range(n)
    ]
    for i, r in enumerate(requests):
        cache.store(r, _answer(f"{2 * i}"))
    samples = []
    for i in range(lookups):
        r = requests[i % n]
        t0 = time.perf_counter_ns()
        hit = cache.lookup(r)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        assert hit is not None and hit.kind == "exact"
    return summarize(samples).to_dict()
