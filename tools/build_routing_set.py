"""Build src/lmgauge/data/routing_queries.jsonl: the labeled query set for the router.

    python tools/build_routing_set.py          # rewrites the file; same output every time (seeded)

Labels say how much model a query needs:
  simple    one fact, a definition, a one-line rewrite or translation, arithmetic with one or two
            operations, chit-chat. A good answer is a sentence or a short list.
  moderate  a paragraph or a short piece of code, a few reasoning steps, work on a supplied text
            (summarize, extract, classify a handful of items), a comparison of two things, an email.
  complex   multi-step reasoning or planning, a design with trade-offs, a proof, long or heavily
            constrained writing, debugging or refactoring real code, analysis along several axes.

Items are the hand-written queries in routing_queries_hand.py plus queries from a few templates
with seeded fillers (so the set also holds near-duplicates in form, as real traffic does).
The train/test split is by group: each hand-written query is its own group, and all the queries
of one template share a group, so a template never appears on both sides of the split.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from routing_queries_hand import COMPLEX, MODERATE, SIMPLE

OUT = Path(__file__).resolve().parent.parent / "src" / "lmgauge" / "data" / "routing_queries.jsonl"
SEED = 7
TEST_SHARE = 0.3
PER_TEMPLATE = 6

COUNTRIES = ["France", "Kenya", "Peru", "Norway", "Vietnam", "Egypt", "Chile", "Poland", "Canada", "Thailand"]
UNITS = [
    ("kilograms", "pounds"),
    ("liters", "gallons"),
    ("meters", "feet"),
    ("miles", "kilometers"),
    ("inches", "centimeters"),
    ("ounces", "grams"),
]
PHRASES = [
    "where is the train station",
    "I would like a coffee",
    "see you tomorrow",
    "how much does this cost",
    "nice to meet you",
    "I am lost",
]
LANGUAGES = ["Italian", "German", "Portuguese", "Dutch", "French", "Spanish"]
LANGS = ["Python", "JavaScript", "Go", "Java", "Rust", "TypeScript"]
SMALL_TASKS = [
    "removes duplicates from a list while keeping the order",
    "counts the vowels in a string",
    "returns the n-th Fibonacci number",
    "converts a date string from DD/MM/YYYY to YYYY-MM-DD",
    "merges two sorted lists",
    "checks whether a year is a leap year",
]
PAIRS = [
    ("a mutex", "a semaphore"),
    ("RAM", "storage"),
    ("a simile", "a metaphor"),
    ("mitosis", "meiosis"),
    ("an index fund", "an actively managed fund"),
    ("weather", "climate"),
    ("SQL", "NoSQL databases"),
    ("a latte", "a cappuccino"),
]
RECIPIENTS = [
    ("my manager", "taking Friday off"),
    ("a client", "a delayed delivery"),
    ("my team", "the new code review rules"),
    ("a professor", "an extension for my essay"),
    ("a neighbor", "noise late at night"),
    ("the HR department", "updating my bank details"),
]
SYSTEMS = [
    ("a chat application", "5 million daily users"),
    ("a payment processing service", "2,000 transactions per second"),
    ("a video streaming platform", "300,000 concurrent viewers"),
    ("a ride-sharing dispatch system", "a city of 8 million people"),
    ("a logging pipeline", "1 TB of logs per day"),
    ("a ticketing system for concert sales", "sudden spikes of 100x normal traffic"),
]
ASPECTS = [
    "storage, caching, failure handling and monitoring",
    "data model, consistency, scaling and cost",
    "APIs, queues, retries and observability",
]
POSITIONS = [
    "that cities should ban cars from their centers",
    "that homework should be abolished in primary schools",
    "that remote work is better for productivity",
    "that nuclear power is essential to fight climate change",
    "that social media platforms should verify every user's identity",
    "that public transport should be free",
]
ALGORITHMS = [
    "a trie with prefix search and deletion",
    "an interval tree",
    "the A* search algorithm on a grid",
    "a union-find structure with path compression",
    "a consistent hashing ring with virtual nodes",
    "a bloom filter with a configurable false-positive rate",
]
OPTIONS3 = [
    ("PostgreSQL", "MongoDB", "Cassandra", "an IoT sensor platform"),
    ("React", "Vue", "Svelte", "a small team's admin dashboard"),
    ("Kafka", "RabbitMQ", "Redis Streams", "an order-processing backend"),
    ("AWS Lambda", "containers on Kubernetes", "a single VM", "a B2B SaaS with spiky traffic"),
    ("index funds", "real estate", "paying down a mortgage", "a 35-year-old with $50,000 to invest"),
    ("Flutter", "React Native", "native apps", "a banking app"),
]


def simple_templates(rng: random.Random) -> dict[str, list[str]]:
    return {
        "capital": [f"What is the capital of {c}?" for c in rng.sample(COUNTRIES, PER_TEMPLATE)],
        "convert": [f"Convert {rng.randint(2, 250)} {a} to {b}." for a, b in rng.sample(UNITS, PER_TEMPLATE)],
        "arith": [
            rng.choice(["What is {a} + {b}?", "what's {a} times {b}", "What is {a} minus {b}?"]).format(
                a=rng.randint(10, 99), b=rng.randint(2, 20)
            )
            for _ in range(PER_TEMPLATE)
        ],
        "translate": [
            f"Translate '{p}' into {lang}."
            for p, lang in zip(rng.sample(PHRASES, PER_TEMPLATE), rng.sample(LANGUAGES, PER_TEMPLATE), strict=True)
        ],
    }


def moderate_templates(rng: random.Random) -> dict[str, list[str]]:
    return {
        "function": [
            f"Write a {lang} function that {t}."
            for lang, t in zip(rng.sample(LANGS, PER_TEMPLATE), rng.sample(SMALL_TASKS, PER_TEMPLATE), strict=True)
        ],
        "difference": [
            f"Explain the difference between {a} and {b}, with an example of each."
            for a, b in rng.sample(PAIRS, PER_TEMPLATE)
        ],
        "email": [f"Write a short, polite email to {r} about {t}." for r, t in rng.sample(RECIPIENTS, PER_TEMPLATE)],
    }


def complex_templates(rng: random.Random) -> dict[str, list[str]]:
    return {
        "design": [
            f"Design {s} that handles {n}. Cover {rng.choice(ASPECTS)}, and explain the trade-offs of "
            "your main decisions."
            for s, n in rng.sample(SYSTEMS, PER_TEMPLATE)
        ],
        "essay": [
            f"Write an essay of about 900 words arguing {p}. Address the strongest counterarguments and "
            "say what evidence would change your mind."
            for p in rng.sample(POSITIONS, PER_TEMPLATE)
        ],
        "implement": [
            f"Implement {a} in {lang}, analyze the time and space complexity of each operation, and write "
            "tests for the edge cases."
            for a, lang in zip(rng.sample(ALGORITHMS, PER_TEMPLATE), rng.sample(LANGS, PER_TEMPLATE), strict=True)
        ],
        "compare3": [
            f"Compare {a}, {b} and {c} for {ctx} in terms of cost, operational complexity, performance "
            "and risk, then recommend one and explain when you would choose differently."
            for a, b, c, ctx in rng.sample(OPTIONS3, PER_TEMPLATE)
        ],
    }


def build() -> list[dict]:
    rng = random.Random(SEED)
    groups: list[tuple[str, str, list[str]]] = []  # (label, group id, queries)
    for label, hand in (("simple", SIMPLE), ("moderate", MODERATE), ("complex", COMPLEX)):
        groups += [(label, f"hand-{label}-{i}", [q]) for i, q in enumerate(hand)]
    for label, make in (("simple", simple_templates), ("moderate", moderate_templates), ("complex", complex_templates)):
        groups += [(label, f"template-{name}", qs) for name, qs in make(rng).items()]

    items: list[dict] = []
    for label in ("simple", "moderate", "complex"):
        mine = [g for g in groups if g[0] == label]
        rng.shuffle(mine)
        target = round(TEST_SHARE * sum(len(g[2]) for g in mine))
        in_test = 0
        for _, group, queries in mine:
            split = "test" if in_test < target else "train"
            if split == "test":
                in_test += len(queries)
            items += [{"text": q, "label": label, "split": split, "group": group} for q in queries]
    texts = [i["text"] for i in items]
    assert len(texts) == len(set(texts)), "duplicate queries"
    for n, item in enumerate(sorted(items, key=lambda i: (i["label"], i["group"], i["text"]))):
        item["id"] = f"q{n + 1:03d}"
    return sorted(items, key=lambda i: i["id"])


def main() -> None:
    items = build()
    with OUT.open("w") as f:
        for item in items:
            f.write(json.dumps({k: item[k] for k in ("id", "label", "split", "group", "text")}) + "\n")
    counts: dict[tuple[str, str], int] = {}
    for i in items:
        counts[i["label"], i["split"]] = counts.get((i["label"], i["split"]), 0) + 1
    print(f"{len(items)} queries -> {OUT}")
    for key in sorted(counts):
        print(f"  {key[0]:<9} {key[1]:<5} {counts[key]}")


if __name__ == "__main__":
    main()
