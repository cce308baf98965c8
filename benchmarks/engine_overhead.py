"""How much does lmgauge's embedded engine cost over a bare llama.cpp loop?

Runs the same model, prompt and settings through lmgauge (Client.generate_stream, raw prompt,
greedy) and through benchmarks/bare_llama.py (llama_decode + numpy argmax), alternating the two
in one run so both see the same machine state. Prints median TTFT and decode tok/s of each and
the ratio. Target: lmgauge >= 95% of the bare loop's decode tok/s.

    python benchmarks/engine_overhead.py [--model smollm2] [--reps 7] [--tokens 128] [--json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import load_side_by_side, model_args  # noqa: E402
from bare_llama import on_llama_thread  # noqa: E402

PROMPT = (
    "<|im_start|>user\nRun {i}: Write a detailed story about a lighthouse keeper "
    "who finds a message in a bottle.<|im_end|>\n<|im_start|>assistant\n"
)


def main() -> None:
    args = model_args(__doc__).parse_args()
    pair = load_side_by_side(args.model, args.ctx)
    client, bare, threads = pair.client, pair.bare, pair.threads
    opts = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": args.tokens, "num_ctx": args.ctx}

    rows = {"lmgauge": [], "bare": []}
    for i in range(args.reps + 1):  # rep 0 warms both up and is discarded
        prompt = PROMPT.format(i=i)  # a unique prefix per rep defeats lmgauge's prefix cache
        result = None
        for chunk in client.generate_stream(args.model, prompt, raw=True, options=opts):
            result = chunk.result or result
        t = result.timings
        b = on_llama_thread(bare.generate, prompt, args.tokens)
        if i == 0:
            continue
        rows["lmgauge"].append(
            {"ttft_ms": t.ttft_ms, "decode_tps": 1000 / t.tpot_ms, "out": t.output_tokens, "prompt": t.prompt_tokens}
        )
        rows["bare"].append(
            {"ttft_ms": b.ttft_ns / 1e6, "decode_tps": b.decode_tps, "out": b.output_tokens, "prompt": b.prompt_tokens}
        )
    pair.close()

    med = {
        k: {m: statistics.median(r[m] for r in v) for m in ("ttft_ms", "decode_tps", "out", "prompt")}
        for k, v in rows.items()
    }
    report = {
        "model": args.model,
        "threads": threads,
        "reps": args.reps,
        "num_predict": args.tokens,
        "median": med,
        "decode_ratio": med["lmgauge"]["decode_tps"] / med["bare"]["decode_tps"],
        "ttft_ratio": med["bare"]["ttft_ms"] / med["lmgauge"]["ttft_ms"],
        "samples": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"model {args.model}, {threads} threads, {args.reps} reps (+1 warmup), {args.tokens} tokens, "
        f"prompt {med['bare']['prompt']:.0f} tokens (lmgauge {med['lmgauge']['prompt']:.0f})"
    )
    print(f"{'':10}{'TTFT ms (p50)':>15}{'decode tok/s (p50)':>20}{'output tokens':>15}")
    for k in ("lmgauge", "bare"):
        print(f"{k:10}{med[k]['ttft_ms']:>15.1f}{med[k]['decode_tps']:>20.1f}{med[k]['out']:>15.0f}")
    print(f"lmgauge / bare decode tok/s: {report['decode_ratio']:.1%}   (target >= 95%)")
    print(f"bare / lmgauge TTFT:         {report['ttft_ratio']:.1%}   (100% = no added latency)")


if __name__ == "__main__":
    main()
