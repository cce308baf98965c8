"""What verifying k drafted tokens costs against one plain decode step, on this CPU.

Speculative decoding (engines/speculative.py) pays only if a decode of 1 + k tokens of one
sequence costs about what a decode of 1 token costs (decoding bound by memory bandwidth: the
weights are read once per step either way). This measures that assumption directly with a bare
llama.cpp loop (benchmarks/bare_llama.py, nothing of lmgauge): after a prompt, decode batches
of 1..K tokens at the sequence's end (removing them again), alternating sizes, and print the
median time of each batch size relative to the 1-token step. It also times a draft model's
1-token step against the target's: the price of each drafted token.

From these two figures the best speed-up a draft model can give follows (for acceptance a per
token, draft length k): expected tokens per step (1 - a^(k+1)) / (1 - a), over the cost
k * draft_step + verify(k + 1), in plain steps.

    flock /tmp/lmgauge-cpu.lock python benchmarks/verify_cost.py [--threads 1,2] [--max-k 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp.llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_llama import BareLlama  # noqa: E402

MODELS = Path(os.environ.get("LMGAUGE_TEST_MODELS", "~/.cache/lmgauge-test-models")).expanduser()
PROMPT = 'def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    """Merge two sorted lists."""\n' * 4


def step_times(bare: BareLlama, sizes: list[int], reps: int) -> dict[int, float]:
    """Median seconds of one decode of n tokens at the end of a prompt, per n (alternated)."""
    tokens = bare.tokenize(PROMPT)
    L.llama_memory_clear(bare.mem, True)
    bare.prefill(tokens)
    pos = len(tokens)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(reps):
        for n in sizes:
            for i in range(n):
                bare._add(i, tokens[i % len(tokens)], pos + i, 0, True)
            bare.batch.n_tokens = n
            t0 = time.perf_counter()
            if L.llama_decode(bare.ctx, bare.batch) != 0:
                raise RuntimeError("llama_decode failed")
            times[n].append(time.perf_counter() - t0)
            L.llama_memory_seq_rm(bare.mem, 0, pos, -1)
    return {n: statistics.median(v) for n, v in times.items()}


def best_speedup(a: float, k: int, draft_step: float, verify: float) -> float:
    tokens = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
    return tokens / (k * draft_step + verify)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default=str(MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--draft", default=str(MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (ratios within this run)")
    sizes = list(range(1, args.max_k + 2))
    for threads in [int(t) for t in args.threads.split(",")]:
        target = BareLlama(args.target, 1024, threads)
        draft = BareLlama(args.draft, 1024, threads)
        t = step_times(target, sizes, args.reps)
        d = step_times(draft, [1], args.reps)[1]
        one = t[1]
        rel = {n: v / one for n, v in t.items()}
        print(
            f"threads {threads}: target 1-token step {one * 1000:.0f} ms, draft model step {d * 1000:.0f} ms "
            f"= {d / one:.2f} of a target step"
        )
        print("  batch of n tokens / 1-token step: " + ", ".join(f"n={n} {r:.2f}" for n, r in rel.items()))
        for a in (0.7, 0.8, 0.9):
            best = max((best_speedup(a, k, d / one, rel[k + 1]), k) for k in range(1, args.max_k + 1))
            look = max((best_speedup(a, k, 0.0, rel[k + 1]), k) for k in range(1, args.max_k + 1))
            print(
                f"  acceptance {a:.0%}: best draft-model speed-up {best[0]:.2f}x (k={best[1]}); "
                f"a free draft (prompt lookup) {look[0]:.2f}x (k={look[1]})"
            )
        for bare in (target, draft):
            L.llama_batch_free(bare.batch)
            L.llama_free(bare.ctx)
            L.llama_model_free(bare.model)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
