"""Does batching change greedy answers? Each model answers 8 prompts at temperature 0 twice on
the same engine (8 slots): one at a time, then all 8 at once in one batch. Prints, per model,
how many of the 8 answers are identical token for token, and where the first differing one
diverges. For SmolLM2 (Q4_1) the answers are identical (tests/test_batching.py asserts it); for
K-quants (Q4_K_M) llama.cpp's batched matrix products may sum in another order than a single
row's, so a near-tie between two tokens can flip and the answers part from there.

    python benchmarks/batch_identity.py [--model smollm2 --model /work/models/qwen...gguf] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from lmgauge import Client
from lmgauge.types import Message

sys.path.insert(0, str(Path(__file__).parent))

from batching import GREEDY, TOPICS  # noqa: E402  (the same greedy settings and story topics)


def answers(client: Client, model: str, together: bool, tokens: int) -> list[str]:
    prompts = [f"Write a detailed story about {t}." for t in TOPICS[:8]]
    out: list[str] = [""] * len(prompts)

    def one(i: int) -> None:
        out[i] = client.chat(model, [Message("user", prompts[i])], options={**GREEDY, "num_predict": tokens}).content

    if not together:
        for i in range(len(prompts)):
            one(i)
    else:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="repeatable; default smollm2 (+ /work/models/*0.5b*.gguf)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    args = ap.parse_args()
    models = args.model or ["smollm2", *map(str, sorted(Path("/work/models").glob("*0.5b*.gguf")))]
    for model in models:
        # The same engine both times (a different context size alone changes the sums' order too);
        # no prefix reuse, so every answer is computed from its whole prompt.
        with Client(parallel=8, num_ctx=args.ctx, keep_alive=-1, prefix_cache=False) as client:
            alone = answers(client, model, False, args.tokens)
            batched = answers(client, model, True, args.tokens)
        same = sum(a == b for a, b in zip(alone, batched, strict=True))
        line = f"{Path(model).name}: {same}/8 answers identical alone vs in a batch of 8"
        for a, b in zip(alone, batched, strict=True):
            if a != b:
                at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                line += (
                    f"; first difference at character {at} of {len(a)}: {a[max(0, at - 20) : at + 20]!r} vs "
                    f"{b[max(0, at - 20) : at + 20]!r}"
                )
                break
        print(line, flush=True)


if __name__ == "__main__":
    main()
