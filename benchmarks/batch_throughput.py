"""Does `lmgauge batch --concurrency N` use the embedded engine's continuous batching?

Answers the same number of prompts (greedy, fixed output length) three ways, each with its own
unique prompts so no run is helped by another's prefix cache:
  reference     a plain loop of Client.chat calls, one at a time
  batch -c 1    run_batch with one worker (the batch machinery's own cost shows here)
  batch -c N    run_batch with N workers on a Client with parallel = N (N sequences share each
                decode step)
Prints items/s and output tokens/s of each and the ratios.

    python benchmarks/batch_throughput.py [--model smollm2] [--items 24] [--concurrency 4] [--tokens 48] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from lmgauge import Client
from lmgauge.batch import BatchItem, read_results, run_batch

TOPICS = [
    "the sea",
    "a city at night",
    "an old library",
    "a mountain village",
    "a robot",
    "a forest fire",
    "a train journey",
    "the first snow",
]


def items(tag: str, n: int) -> list[BatchItem]:
    return [
        BatchItem(
            f"{tag}-{i}",
            [{"role": "user", "content": f"[{tag} {i}] Write a short poem about {TOPICS[i % len(TOPICS)]}."}],
        )
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    options = {"temperature": 0, "num_predict": args.tokens, "stop": []}
    rows = {}

    with Client(keep_alive=-1, parallel=1) as client:
        client.chat(args.model, [{"role": "user", "content": "warm-up"}], options={"num_predict": 4})
        t0 = time.perf_counter()
        tokens = sum(
            client.chat(args.model, it.messages, options=options).timings.output_tokens
            for it in items("loop", args.items)
        )
        rows["reference: Client.chat loop"] = (time.perf_counter() - t0, tokens)

    for n in (1, args.concurrency):
        with Client(keep_alive=-1, parallel=n) as client, tempfile.TemporaryDirectory() as tmp:
            client.chat(args.model, [{"role": "user", "content": "warm-up"}], options={"num_predict": 4})

            def answer(item: BatchItem):
                return client.chat(args.model, item.messages, options=options), None, False

            out = Path(tmp) / "out.jsonl"
            t0 = time.perf_counter()
            summary = run_batch(items(f"c{n}", args.items), out, answer, args.model, concurrency=n)
            elapsed = time.perf_counter() - t0
            assert summary.ok == args.items, summary
            tokens = sum(r["timings"]["output_tokens"] for r in read_results(out).values())
            rows[f"batch -c {n}" + (f" (parallel={n})" if n > 1 else "")] = (elapsed, tokens)

    ref_s = rows["reference: Client.chat loop"][0]
    if args.json:
        print(
            json.dumps(
                {
                    k: {
                        "seconds": s,
                        "items_per_s": args.items / s,
                        "tokens_per_s": t / s,
                        "speedup_vs_loop": ref_s / s,
                    }
                    for k, (s, t) in rows.items()
                },
                indent=1,
            )
        )
        return
    print(f"{args.items} prompts, {args.model}, up to {args.tokens} output tokens each")
    print(f"{'':<34}{'seconds':>9}{'items/s':>9}{'tok/s':>8}{'vs loop':>9}")
    for name, (s, t) in rows.items():
        print(f"{name:<34}{s:>9.2f}{args.items / s:>9.2f}{t / s:>8.1f}{ref_s / s:>8.2f}x")


if __name__ == "__main__":
    main()
