"""Does `lmgauge bench` distort what it measures?

The same requests, alternating in one run:
  - lmgauge bench's own per-request code (`bench.runner.measure`: Client.chat_stream, the
    client clock stamped by the Client, the engine clock from the embedded engine), on the
    bench's own prompts (`bench.prompts`, a fresh nonce per request);
  - benchmarks/bare_llama.py timed by hand: the identical templated prompt text tokenized,
    prefilled and greedy-decoded with llama_decode + numpy argmax, perf_counter_ns around it.
Both see the same model file, threads, window and batch size, greedy sampling without repeat
penalty (so both produce the same tokens), and evaluate every prompt token (prefix reuse is
off on the lmgauge side, as the bare loop clears its cache per request). Which side goes first
alternates every repetition.

Printed: median TTFT (lmgauge's client clock vs the hand-timed bare loop) and median decode
tok/s (lmgauge's engine clock as the bench reports it, and its client clock 1000/TPOT, vs the
bare loop), and their ratio: the median over repetitions of lmgauge / bare for the two requests
run back to back (robust to a machine whose load drifts during the run); target within 2%. And client-side TPOT vs the engine's own decode timing
per request (median ratio); target within 5%.

    python benchmarks/harness_overhead.py [--model smollm2] [--reps 7] [--tokens 128] [--json]
Run it on a quiet machine (flock /tmp/lmgauge-cpu.lock ...): contention makes both sides noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import load_side_by_side, model_args  # noqa: E402
from bare_llama import on_llama_thread  # noqa: E402
from lmgauge.bench.prompts import load_prompts  # noqa: E402
from lmgauge.bench.runner import measure  # noqa: E402
from lmgauge.engines.llamacpp import make_template  # noqa: E402
from lmgauge.models import inspect_gguf  # noqa: E402
from lmgauge.types import Message  # noqa: E402


def main() -> None:
    ap = model_args(__doc__)
    ap.add_argument("--prompts", default="short,medium", help="bench prompt set(s) to use")
    args = ap.parse_args()

    pair = load_side_by_side(args.model, args.ctx, prefix_cache=False, parallel=1)
    client, ref, bare, threads = pair.client, pair.ref, pair.bare, pair.threads
    engine = client.engine(ref)
    template = make_template(inspect_gguf(ref.target), bare.vocab)
    options = {"temperature": 0, "seed": 42, "repeat_penalty": 1.0, "num_predict": args.tokens, "num_ctx": args.ctx}

    report: dict = {
        "model": args.model,
        "threads": threads,
        "reps": args.reps,
        "num_predict": args.tokens,
        "load_avg_start": os.getloadavg(),
        "prompts": {},
    }
    for prompt in load_prompts(args.prompts):
        rows: dict[str, list[dict]] = {"lmgauge": [], "bare": []}
        mismatched = 0
        for i in range(args.reps + 1):  # rep 0 warms both up and is discarded
            messages = prompt.with_nonce(uuid.uuid4().hex[:8])
            text = template.render([Message.from_dict(m) for m in messages])
            if bare.tokenize(text) != engine.chat_tokens(ref.target, [Message.from_dict(m) for m in messages]):
                mismatched += 1

            def run_lmgauge() -> dict:
                sample, _ = measure(
                    client,
                    messages,  # noqa: B023  called within this iteration, not after the loop
                    options,
                    run_id="overhead",
                    seq=0,
                    model=args.model,
                    prompt=prompt.name,  # noqa: B023  called within this iteration, not after the loop
                    rep=i,  # noqa: B023  called within this iteration, not after the loop
                )
                assert sample.status == "ok", sample.error
                return {
                    "ttft_ms": sample.ttft_ms,
                    "decode_tps": sample.decode_tps,
                    "client_decode_tps": 1000 / sample.tpot_ms,
                    "tpot_ms": sample.tpot_ms,
                    "engine_tpot_ms": sample.engine_tpot_ms,
                    "out": sample.output_tokens,
                    "prompt": sample.prompt_tokens,
                    "cached": sample.cached_tokens,
                }

            def run_bare() -> dict:
                b = on_llama_thread(bare.generate, text, args.tokens)  # noqa: B023  called within this iteration, not after the loop
                return {
                    "ttft_ms": b.ttft_ns / 1e6,
                    "decode_tps": b.decode_tps,
                    "out": b.output_tokens,
                    "prompt": b.prompt_tokens,
                }

            order = (("lmgauge", run_lmgauge), ("bare", run_bare))
            for name, fn in order if i % 2 == 0 else reversed(order):
                row = fn()
                if i > 0:
                    rows[name].append(row)
        med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in rows.items()}
        tpot_ratio = statistics.median(r["tpot_ms"] / r["engine_tpot_ms"] for r in rows["lmgauge"])
        pairs = list(zip(rows["lmgauge"], rows["bare"], strict=True))  # run back to back: the same machine state

        def paired(key: str, bare_key: str | None = None) -> float:
            return statistics.median(a[key] / b[bare_key or key] for a, b in pairs)  # noqa: B023  called within this iteration, not after the loop

        report["prompts"][prompt.name] = {
            "median": med,
            "ttft_ratio": paired("ttft_ms"),
            "decode_ratio": paired("decode_tps"),
            "client_decode_ratio": paired("client_decode_tps", "decode_tps"),
            "ratio_of_medians": {
                "ttft": med["lmgauge"]["ttft_ms"] / med["bare"]["ttft_ms"],
                "decode": med["lmgauge"]["decode_tps"] / med["bare"]["decode_tps"],
            },
            "client_tpot_over_engine_tpot": tpot_ratio,
            "token_mismatches": mismatched,
            "samples": rows,
        }
    report["load_avg_end"] = os.getloadavg()
    pair.close()

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"model {args.model}, {threads} threads, {args.reps} reps (+1 warmup) per prompt, alternating, "
        f"num_predict {args.tokens}; load average {report['load_avg_start'][0]:.2f} at start, "
        f"{report['load_avg_end'][0]:.2f} at end"
    )
    for name, r in report["prompts"].items():
        lm, b = r["median"]["lmgauge"], r["median"]["bare"]
        print(
            f"\nprompt {name!r}: {lm['prompt']:.0f} prompt tokens (bare {b['prompt']:.0f}, "
            f"{lm['cached']:.0f} cached), {lm['out']:.0f} output tokens (bare {b['out']:.0f})"
            + (f"  WARNING: {r['token_mismatches']} prompts tokenized differently" if r["token_mismatches"] else "")
        )
        print(
            f"  {'':30}{'lmgauge bench':>15}{'bare, by hand':>15}{'ratio':>9}   target   (ratio: median of "
            "the per-pair ratios; ratio of the medians in --json)"
        )
        print(
            f"  {'TTFT ms (p50, client clock)':30}{lm['ttft_ms']:>15.2f}{b['ttft_ms']:>15.2f}"
            f"{r['ttft_ratio']:>9.1%}   within 2% ({_verdict(r['ttft_ratio'], 0.02)})"
        )
        print(
            f"  {'decode tok/s (p50, engine)':30}{lm['decode_tps']:>15.2f}{b['decode_tps']:>15.2f}"
            f"{r['decode_ratio']:>9.1%}   within 2% ({_verdict(r['decode_ratio'], 0.02)})"
        )
        print(
            f"  {'decode tok/s (p50, 1000/TPOT)':30}{lm['client_decode_tps']:>15.2f}{b['decode_tps']:>15.2f}"
            f"{r['client_decode_ratio']:>9.1%}   within 2% ({_verdict(r['client_decode_ratio'], 0.02)})"
        )
        print(
            f"  client TPOT / engine TPOT (p50 of per-request ratios): {r['client_tpot_over_engine_tpot']:.2%}"
            f"   within 5% ({_verdict(r['client_tpot_over_engine_tpot'], 0.05)})"
        )


def _verdict(ratio: float, tolerance: float) -> str:
    return "met" if abs(ratio - 1) <= tolerance else "NOT met"


if __name__ == "__main__":
    main()
