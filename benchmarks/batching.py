"""Continuous batching in the embedded engine: how much does decoding streams together buy?

For each model and each batch size N in 1, 2, 4, 8, 16, in one run:
  - lmgauge batched:    N concurrent requests through one Client with parallel=N
  - lmgauge sequential: the same N requests one after another (parallel=1)
  - bare batched loop:  benchmarks/bare_llama.py, one llama_decode per step for all N streams
All greedy (temperature 0, no repeat penalty) on the same prompts, so all three produce the same
tokens. Aggregate throughput = all output tokens / wall time from the first request sent to
the last token (prefill included, the same definition for all three); per-stream TPOT from
each request's client clock; aggregate decode = the sum of the streams' decode rates (1000 /
TPOT each; one stream's rate when sequential; N x 1000 / step time for the bare loop). Targets: >= 2.0x aggregate at 8 streams on smollm2 vs sequential,
and lmgauge batched >= 90% of the bare batched loop at every N.

Then shared-prefix reuse: 8 requests sharing a ~1,000-token system prompt, sent together, with
and without prefix reuse: time until all 8 have their first token, median TTFT, and prompt
tokens actually evaluated. Target: >= 5x less prefill.

    python benchmarks/batching.py [--model smollm2 --model /work/models/qwen...gguf] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bare_llama import BareLlama, on_llama_thread  # noqa: E402
from lmgauge import Client  # noqa: E402
from lmgauge.engines.llamacpp import default_threads  # noqa: E402
from lmgauge.types import Message  # noqa: E402

GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
TOPICS = [
    "a lighthouse",
    "a desert caravan",
    "a clockmaker",
    "a lost robot",
    "a mountain village",
    "a deep-sea diver",
    "a city at night",
    "an old library",
    "a comet",
    "a chess match",
    "a river journey",
    "a winter forest",
    "a space station",
    "a jazz club",
    "a small bakery",
    "a storm at sea",
]


def prompts_for(n: int, run: str) -> list[str]:
    return [f"[{run}-{i}] Write a long, detailed story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def lmgauge_batch(client: Client, model: str, prompts: list[str], tokens: int, concurrent: bool) -> dict:
    results = [None] * len(prompts)

    def one(i: int) -> None:
        results[i] = client.chat(model, [Message("user", prompts[i])], options={**GREEDY, "num_predict": tokens})

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(prompts)):
            one(i)
    wall = time.perf_counter() - t0
    out = sum(r.timings.output_tokens for r in results)
    tpots = [r.timings.tpot_ms for r in results if r.timings.tpot_ms]
    # Decode-only aggregate: the streams decode side by side, so their rates add up; one after
    # another, the rate is one stream's.
    rates = [1000 / x for x in tpots]
    decode = sum(rates) if concurrent else statistics.median(rates)
    return {
        "tokens": out,
        "wall_s": wall,
        "agg_tps": out / wall,
        "tpot_ms": statistics.median(tpots),
        "decode_tps": decode,
    }


def bare_batch(bare: BareLlama, client: Client, model: str, prompts: list[str], tokens: int) -> dict:
    ref = client.resolve(model)
    engine = client.engine(ref)
    token_lists = [engine.chat_tokens(ref.target, [Message("user", p)]) for p in prompts]
    t0 = time.perf_counter()
    out, decode_ns, steps = on_llama_thread(bare.generate_batch, token_lists, tokens)
    wall = time.perf_counter() - t0
    tpot = decode_ns / 1e6 / max(steps, 1)
    return {
        "tokens": out,
        "wall_s": wall,
        "agg_tps": out / wall,
        "tpot_ms": tpot,
        "decode_tps": len(prompts) * 1000 / tpot,
    }


def batching_table(model: str, sizes: list[int], tokens: int, ctx: int, threads: int) -> list[dict]:
    rows = []
    seq_client = Client(parallel=1, num_ctx=ctx, threads=threads, keep_alive=-1, prefix_cache=False)
    ref = seq_client.resolve(model)
    seq_client.chat(model, [Message("user", "warm up")], options={**GREEDY, "num_predict": 8})
    for n in sizes:
        client = Client(parallel=n, num_ctx=ctx, threads=threads, keep_alive=-1, prefix_cache=False)
        client.chat(model, [Message("user", "warm up")], options={**GREEDY, "num_predict": 8})
        bare = on_llama_thread(BareLlama, ref.target, n_ctx=ctx, threads=threads, n_seq=n)
        on_llama_thread(bare.generate_batch, [[1, 2, 3]], 4)  # warm up
        batched = lmgauge_batch(client, model, prompts_for(n, "b"), tokens, concurrent=True)
        reference = bare_batch(bare, client, model, prompts_for(n, "b"), tokens)
        sequential = lmgauge_batch(seq_client, model, prompts_for(n, "s"), tokens, concurrent=False)
        bare.close()
        client.close()
        row = {
            "model": model,
            "n": n,
            "lmgauge": batched,
            "sequential": sequential,
            "bare": reference,
            "speedup_vs_sequential": batched["agg_tps"] / sequential["agg_tps"],
            "vs_bare": batched["agg_tps"] / reference["agg_tps"],
            "decode_speedup_vs_sequential": batched["decode_tps"] / sequential["decode_tps"],
            "decode_vs_bare": batched["decode_tps"] / reference["decode_tps"],
        }
        rows.append(row)
        print(
            f"{model:>10} N={n:<3} lmgauge {batched['agg_tps']:7.1f} tok/s (TPOT {batched['tpot_ms']:6.1f} ms)  "
            f"sequential {sequential['agg_tps']:6.1f}  bare batched {reference['agg_tps']:7.1f}  "
            f"speedup {row['speedup_vs_sequential']:4.2f}x  vs bare {row['vs_bare']:6.1%} | decode only: lmgauge "
            f"{batched['decode_tps']:6.1f}  sequential {sequential['decode_tps']:5.1f}  bare {reference['decode_tps']:6.1f}  "
            f"speedup {row['decode_speedup_vs_sequential']:4.2f}x  vs bare {row['decode_vs_bare']:6.1%}",
            flush=True,
        )
    seq_client.close()
    return rows


def shared_prefix(model: str, ctx: int, threads: int, tokens: int) -> dict:
    system = "You are a careful assistant for a logistics company. " + " ".join(
        f"Policy {i}: shipments of category {i} must be logged with their weight, origin and carrier."
        for i in range(50)
    )
    out = {}
    for reuse in (False, True):
        client = Client(parallel=8, num_ctx=ctx, threads=threads, keep_alive=-1, prefix_cache=reuse)
        client.chat(model, [Message("user", "warm up")], options={**GREEDY, "num_predict": 4})
        results = [None] * 8

        def one(i: int) -> None:
            results[i] = client.chat(  # noqa: B023  called within this iteration, not after the loop
                model,
                [Message("system", system), Message("user", f"Question {i}: what is {i}+{i}?")],
                options={**GREEDY, "num_predict": tokens},
            )

        t0 = time.perf_counter_ns()
        threads_ = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        first_tokens = [r.timings.first_token_ns for r in results]
        out["reuse" if reuse else "no_reuse"] = {
            "prompt_tokens": results[0].timings.prompt_tokens,
            "evaluated_tokens": sum(r.timings.prompt_eval_tokens for r in results),
            "cached_tokens": sum(r.timings.cached_tokens for r in results),
            "all_first_token_ms": (max(first_tokens) - t0) / 1e6,
            "ttft_p50_ms": statistics.median(r.timings.ttft_ms for r in results),
        }
        client.close()
    out["prefill_time_ratio"] = out["no_reuse"]["all_first_token_ms"] / out["reuse"]["all_first_token_ms"]
    out["evaluated_ratio"] = out["no_reuse"]["evaluated_tokens"] / out["reuse"]["evaluated_tokens"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", action="append", help="repeatable; default smollm2 (+ /work/models/*0.5b*.gguf if present)"
    )
    ap.add_argument("--sizes", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.model or ["smollm2"] + [str(p) for p in sorted(Path("/work/models").glob("*0.5b*.gguf"))][:1]
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = default_threads()
    report = {"threads": threads, "tokens": args.tokens, "ctx": args.ctx, "batching": [], "shared_prefix": {}}
    for model in models:
        report["batching"] += batching_table(model, sizes, args.tokens, args.ctx, threads)
    sp = shared_prefix(models[0], 2048, threads, 8)
    report["shared_prefix"] = sp
    print(f"\nshared ~{sp['reuse']['prompt_tokens']}-token prompt, 8 requests together ({models[0]}):")
    for k in ("no_reuse", "reuse"):
        v = sp[k]
        print(
            f"  {k:9} all first tokens after {v['all_first_token_ms']:8.1f} ms, TTFT p50 {v['ttft_p50_ms']:8.1f} ms, "
            f"evaluated {v['evaluated_tokens']:5d} tokens ({v['cached_tokens']} from cache)"
        )
    print(
        f"  prefill time {sp['prefill_time_ratio']:.1f}x less, tokens evaluated {sp['evaluated_ratio']:.1f}x fewer "
        "(target >= 5x)"
    )
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
