"""What does deciding cost, next to what it decides about?

Times `Router.route` (the whole decision a request pays for: embedding, features, logistic
regression, tier choice) with the feature classifier over the shipped test queries, and with
the LLM classifier (the seed's approach: a model call per vote) over a sample of them; as the
reference, the TTFT of the cheapest model answering the same queries. Prints p50/p95 and the
ratios. Target: feature classifier p95 < 5 ms.

    python benchmarks/routing_overhead.py [--model smollm2] [--llm-sample 15] [--votes 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed_ms, use_repo  # noqa: E402

use_repo()
from lmgauge import Client  # noqa: E402
from lmgauge.bench.metrics import summarize  # noqa: E402
from lmgauge.embedding import make_embedder  # noqa: E402
from lmgauge.routing import LLMClassifier, Router, Tier, default_classifier, load_queries  # noqa: E402


def time_routes(router: Router, texts: list[str]) -> list[float]:
    router.route([{"role": "user", "content": "warm-up"}])
    return timed_ms(lambda i: router.route([{"role": "user", "content": texts[i]}]), len(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="the cheapest tier: LLM classifier and TTFT reference")
    ap.add_argument("--llm-sample", type=int, default=15)
    ap.add_argument("--votes", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    texts = [q.text for q in load_queries("test")]
    tiers = [Tier("small", args.model), Tier("large", args.model)]
    features = time_routes(Router(None, tiers, default_classifier(make_embedder("wordllama"), "train")), texts)
    sample = texts[:: max(len(texts) // args.llm_sample, 1)][: args.llm_sample]
    with Client(keep_alive=-1) as client:
        client.chat(args.model, [{"role": "user", "content": "hi"}], options={"num_predict": 1})  # load
        llm = time_routes(Router(client, tiers, LLMClassifier(client, args.model, votes=args.votes)), sample)
        ttft = []
        for text in sample:
            r = client.chat(
                args.model, [{"role": "user", "content": text}], options={"temperature": 0, "num_predict": 1}
            )
            ttft.append(r.timings.ttft_ms)
    rows = {
        "features classifier": summarize(features),
        f"LLM classifier ({args.votes} votes)": summarize(llm),
        f"{args.model} TTFT (reference)": summarize(ttft),
    }
    if args.json:
        print(json.dumps({k: v.to_dict() for k, v in rows.items()}, indent=1))
        return
    print(f"{'Router.route per query':<34}{'p50 ms':>10}{'p95 ms':>10}{'n':>6}")
    for name, s in rows.items():
        print(f"{name:<34}{s.p50:>10.2f}{s.p95:>10.2f}{s.n:>6}")
    f, llm_s, t = rows.values()
    print(
        f"features classifier p95 = {f.p95 / t.p50:.1%} of a {args.model} TTFT (p50); the LLM classifier costs "
        f"{llm_s.p50 / f.p50:,.0f}x the feature classifier (p50). Target p95 < 5 ms: "
        f"{'met' if f.p95 < 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
