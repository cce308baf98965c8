"""Does batching change greedy answers? Each model answers 8 prompts at temperature 0 three
times on the same engine (8 slots): one at a time; all 8 at once; and staggered, each sent a
quarter of a second after the previous one, so newcomers' prompts are evaluated beside running
streams and their KV cells land among theirs. Prints, per model and way, how many of the 8
answers are identical token for token to the ones given alone, and where the first differing
one diverges. tests/test_batching.py asserts the same for short answers on SmolLM2.

    python benchmarks/batch_identity.py [--model smollm2 --model /work/models/qwen...gguf] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from lmgauge import Client
from lmgauge.types import Message

sys.path.insert(0, str(Path(__file__).parent))

from batching import GREEDY, TOPICS  # noqa: E402  (the same greedy settings and story topics)

STAGGER_S = 0.25


def answers(client: Client, model: str, way: str, tokens: int) -> list[str]:
    prompts = [f"Write a detailed story about {t}." for t in TOPICS[:8]]
    out: list[str] = [""] * len(prompts)

    def one(i: int) -> None:
        if way == "staggered":
            time.sleep(i * STAGGER_S)
        out[i] = client.chat(model, [Message("user", prompts[i])], options={**GREEDY, "num_predict": tokens}).content

    if way == "alone":
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
        # The same engine every time (a different context size alone changes the sums' order too);
        # no prefix reuse, so every answer is computed from its whole prompt.
        with Client(parallel=8, num_ctx=args.ctx, keep_alive=-1, prefix_cache=False) as client:
            alone = answers(client, model, "alone", args.tokens)
            for way in ("together", "staggered"):
                print(
                    f"{Path(model).name}, {way}: {compare(alone, answers(client, model, way, args.tokens))}", flush=True
                )


def compare(alone: list[str], other: list[str]) -> str:
    """'k/8 identical', and where the first differing answer parts from the one given alone."""
    same = sum(a == b for a, b in zip(alone, other, strict=True))
    line = f"{same}/{len(alone)} answers identical to the ones given alone"
    for a, b in zip(alone, other, strict=True):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            return line + (
                f"; first difference at character {at} of {len(a)}: {a[max(0, at - 20) : at + 20]!r} vs "
                f"{b[max(0, at - 20) : at + 20]!r}"
            )
    return line


if __name__ == "__main__":
    main()
