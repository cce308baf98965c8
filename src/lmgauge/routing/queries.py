"""The shipped labeled set: queries marked simple / moderate / complex, split into train and test.

The default classifier learns from it, the LLM classifier takes its few-shot examples from it,
and `lmgauge eval routing` scores classifiers on its test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

LEVELS = ("simple", "moderate", "complex")


@dataclass(frozen=True)
class LabeledQuery:
    id: str
    text: str
    label: str
    split: str  # "train" | "test"


def load_queries(split: str | None = None) -> list[LabeledQuery]:
    """The shipped labeled queries (src/lmgauge/data/routing_queries.jsonl), optionally one split."""
    text = resources.files("lmgauge").joinpath("data/routing_queries.jsonl").read_text()
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [
        LabeledQuery(i["id"], i["text"], i["label"], i["split"]) for i in items if split is None or i["split"] == split
    ]
