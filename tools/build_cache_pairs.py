"""Build src/lmgauge/data/cache_pairs.jsonl: labeled question pairs for the semantic cache.

    python tools/build_cache_pairs.py          # rewrites the file; same output every time (seeded)

Each pair is (a, b): `a` is the cached question, `b` arrives later. `kind` is paraphrase
(should_hit: the cached answer is right for b) or a near miss that must not hit: negation,
number or entity. The split (70% train, 30% test, stratified by kind) lets a similarity
threshold be chosen on train and reported on test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from cache_pairs_hand import ENTITIES, NEGATIONS, NUMBERS, PARAPHRASES

OUT = Path(__file__).resolve().parent.parent / "src" / "lmgauge" / "data" / "cache_pairs.jsonl"
SEED = 11
TEST_SHARE = 0.3


def main() -> None:
    rng = random.Random(SEED)
    rows = []
    for kind, pairs in (
        ("paraphrase", PARAPHRASES),
        ("negation", NEGATIONS),
        ("number", NUMBERS),
        ("entity", ENTITIES),
    ):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        test = set(order[: round(TEST_SHARE * len(pairs))])
        for i, (a, b) in enumerate(pairs):
            rows.append(
                {
                    "kind": kind,
                    "should_hit": kind == "paraphrase",
                    "split": "test" if i in test else "train",
                    "a": a,
                    "b": b,
                }
            )
    assert len({(r["a"], r["b"]) for r in rows}) == len(rows), "duplicate pairs"
    with OUT.open("w") as f:
        for n, row in enumerate(rows):
            f.write(json.dumps({"id": f"p{n + 1:03d}", **row}) + "\n")
    print(f"{len(rows)} pairs -> {OUT}")


if __name__ == "__main__":
    main()
