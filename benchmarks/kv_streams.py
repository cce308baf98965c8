"""One KV cache for all sequences (llama.cpp's "unified" cache) or one stream per sequence (what
the embedded engine uses): what does each cost when N streams decode together?

In one run, on the same model, prompts and threads, alternating, with the bare low-level loop
(benchmarks/bare_llama.py, so nothing of lmgauge is measured): N greedy streams prefilled one
after another, then decoded together, one llama_decode per step. Prints the decode rate of each
(all streams' tokens / decode time) and the ratio streams / unified, for short prompts and for
long ones (where a unified cache makes every stream's attention cover every other stream's
cells too), and how many tokens each produced.

    python benchmarks/kv_streams.py [--model smollm2] [--sizes 4,8] [--tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bare_llama import BareLlama, on_llama_thread  # noqa: E402
from batching import TOPICS  # noqa: E402
from lmgauge import Client  # noqa: E402
from lmgauge.engines.llamacpp import default_threads  # noqa: E402
from lmgauge.types import Message  # noqa: E402

LONG_CONTEXT = " ".join(f"Note {i}: the shipment of crate {i} left the dock at {i % 24}:00." for i in range(70))


def prompts(n: int, long: bool) -> list[str]:
    head = LONG_CONTEXT + "\n\n" if long else ""
    return [f"{head}Write a long, detailed story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sizes", default="4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    args = ap.parse_args()
    with Client(parallel=1, keep_alive=-1) as client:
        ref = client.resolve(args.model)
        engine = client.engine(ref)
        threads = client.settings.threads or default_threads()  # the engine's own default
        for long in (False, True):
            texts = {n: prompts(n, long) for n in map(int, args.sizes.split(","))}
            for n, batch in texts.items():
                tokens = [engine.chat_tokens(ref.target, [Message("user", p)]) for p in batch]
                loops = {
                    unified: on_llama_thread(
                        BareLlama, ref.target, n_ctx=args.ctx, threads=threads, n_seq=n, kv_unified=unified
                    )
                    for unified in (True, False)
                }
                rates: dict[bool, list[float]] = {True: [], False: []}
                outputs: dict[bool, int] = {}
                for _ in range(args.reps):
                    for unified, loop in loops.items():  # alternating, so drift hits both alike
                        out, decode_ns, _steps = on_llama_thread(loop.generate_batch, tokens, args.tokens)
                        rates[unified].append(out / (decode_ns / 1e9))
                        outputs[unified] = out
                for loop in loops.values():
                    on_llama_thread(loop.close)
                uni, streams = statistics.median(rates[True]), statistics.median(rates[False])
                print(
                    f"{args.model} N={n} prompts of ~{len(tokens[0])} tokens: unified {uni:6.1f} tok/s  "
                    f"streams {streams:6.1f} tok/s  streams/unified {streams / uni:4.2f}x  "
                    f"(output tokens {outputs[True]} / {outputs[False]})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
