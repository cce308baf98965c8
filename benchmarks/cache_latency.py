"""What does a cache hit cost next to asking the model?

Fills a response cache (SQLite by default; --redis URL for Redis) with N answers, then times:
  exact hit     lookup of a stored request (key hash + one indexed read + hit counter update)
  semantic hit  lookup of a paraphrase (exact miss, embedding, similarity over the neighbourhood,
                guards)
  miss          lookup of an unrelated question (exact miss, embedding, similarity)
and, as the reference, the same short request answered by the model with no cache (client-clock
E2E, greedy, a unique prompt per rep so the engine's prefix cache does not help). Prints p50/p95
of each and the model/exact-hit ratio. Target: exact hit p50 <= 1 ms.

    python benchmarks/cache_latency.py [--model smollm2] [--entries 1000] [--lookups 2000] [--reps 10]
                                       [--redis redis://127.0.0.1:6379/0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed_ms, use_repo  # noqa: E402

use_repo()
from lmgauge import Client  # noqa: E402
from lmgauge.bench.metrics import summarize  # noqa: E402
from lmgauge.cache import RedisBackend, ResponseCache, SQLiteBackend  # noqa: E402
from lmgauge.config import CacheSettings  # noqa: E402
from lmgauge.embedding import make_embedder  # noqa: E402
from lmgauge.store import Store  # noqa: E402
from lmgauge.types import ChatRequest, Message, Options, Result, Timings  # noqa: E402

TOPICS = ["Python", "Rust", "Kenya", "Peru", "photosynthesis", "inflation", "Docker", "the Moon", "jazz", "chess"]


def question(i: int) -> str:
    return f"What is the most important fact about {TOPICS[i % len(TOPICS)]}, item {i}?"


def req(text: str) -> ChatRequest:
    return ChatRequest(
        model="bench",
        messages=[Message("system", "Answer briefly."), Message("user", text)],
        options=Options(temperature=0),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--entries", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--redis", default=None, help="Redis URL: measure the Redis backend instead of SQLite")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    embedder = make_embedder("wordllama")
    with tempfile.TemporaryDirectory() as tmp:
        backend = (
            RedisBackend(args.redis, prefix="lmgauge:bench:")
            if args.redis
            else SQLiteBackend(Store(Path(tmp) / "bench.db"))
        )
        cache = ResponseCache(backend, CacheSettings(max_entries=args.entries * 2), embedder)
        for i in range(args.entries):
            cache.store(req(question(i)), Result("bench", f"answer {i}", "stop", Timings(output_tokens=2)))
        cache.lookup(req(question(0)))  # warm-up
        exact = timed_ms(lambda i: cache.lookup(req(question(i % args.entries))), args.lookups)
        # A paraphrase (the guards pass: same numbers and names) and an unrelated question.
        semantic = timed_ms(
            lambda i: cache.lookup(
                req(f"What's the single most important fact about {TOPICS[i % len(TOPICS)]}, item {i % args.entries}")
            ),
            min(args.lookups, 300),
        )
        miss = timed_ms(
            lambda i: cache.lookup(req(f"How do I bake sourdough bread, attempt {i}?")), min(args.lookups, 300)
        )
        hits = sum(
            cache.lookup(req(f"What's the single most important fact about {TOPICS[i % len(TOPICS)]}, item {i}"))
            is not None
            for i in range(50)
        )
        cache.clear()

    with Client(keep_alive=-1) as client:
        model_ms = []
        for i in range(args.reps + 1):  # rep 0 loads the model and is discarded
            r = client.chat(
                args.model,
                [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"Run {i}: {question(i)}"},
                ],
                options={"temperature": 0, "num_predict": 32},
            )
            if i:
                model_ms.append(r.timings.e2e_ms)

    rows = {
        "exact hit": summarize(exact),
        "semantic hit": summarize(semantic),
        "miss": summarize(miss),
        f"model ({args.model}, <=32 tokens)": summarize(model_ms),
    }
    ratio = rows[f"model ({args.model}, <=32 tokens)"].p50 / rows["exact hit"].p50
    backend_name = "redis" if args.redis else "sqlite"
    if args.json:
        print(
            json.dumps(
                {
                    "backend": backend_name,
                    "entries": args.entries,
                    **{k: v.to_dict() for k, v in rows.items()},
                    "model_over_exact_hit_p50": ratio,
                    "semantic_hits_of_50": hits,
                },
                indent=1,
            )
        )
        return
    print(f"response cache, {backend_name} backend, {args.entries} entries")
    print(f"{'':<34}{'p50 ms':>10}{'p95 ms':>10}{'n':>6}")
    for name, s in rows.items():
        print(f"{name:<34}{s.p50:>10.3f}{s.p95:>10.3f}{s.n:>6}")
    print(
        f"an exact hit is {ratio:,.0f}x faster than asking the model (p50); "
        f"target exact hit p50 <= 1 ms: {'met' if rows['exact hit'].p50 <= 1 else 'NOT met'}"
    )
    print(f"(semantic paraphrase lookups that hit: {hits}/50)")


if __name__ == "__main__":
    main()
