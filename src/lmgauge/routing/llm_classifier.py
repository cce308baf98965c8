"""The seed's classifier, kept as an option: ask a model how hard the request is.

Its output is constrained to the labels by a JSON schema with an enum; its confidence is the
agreement of a few sampled votes. Slower than the feature classifier by a model call per vote.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .queries import LEVELS, LabeledQuery, load_queries

LLM_SYSTEM = (
    "You sort requests to an AI assistant by how much model they need.\n"
    "simple: one fact, a definition, a one-line rewrite or translation, small arithmetic, small talk.\n"
    "moderate: a paragraph or a short piece of code, a few reasoning steps, summarizing or extracting from a "
    "given text, comparing two things, an email.\n"
    "complex: multi-step reasoning or planning, a design with trade-offs, a proof, long or heavily constrained "
    "writing, debugging real code, analysis along several axes.\n"
    'Answer with JSON: {"level": "simple" | "moderate" | "complex"}.'
)

LLM_FORMAT: dict[str, Any] = {
    "type": "object",
    "properties": {"level": {"type": "string", "enum": list(LEVELS)}},
    "required": ["level"],
}


class LLMClassifier:
    """The seed's approach: ask a model. Its answer can only be one of the labels (a JSON schema
    with an enum, enforced by the engine's grammar); confidence is the share of `votes` sampled
    answers that agree (one greedy vote at temperature 0, the others sampled at 0.7)."""

    name = "llm"
    classes: tuple[str, ...] = LEVELS

    def __init__(self, caller: Any, model: str, votes: int = 3, examples: list[LabeledQuery] | None = None):
        self.caller = caller
        self.model = model
        self.votes = votes
        shots = examples if examples is not None else _few_shot(load_queries("train"))
        self._shots: list[dict[str, str]] = []
        for q in shots:
            self._shots += [
                {"role": "user", "content": q.text},
                {"role": "assistant", "content": json.dumps({"level": q.label})},
            ]

    def _vote(self, text: str, i: int) -> str:
        messages = [{"role": "system", "content": LLM_SYSTEM}, *self._shots, {"role": "user", "content": text}]
        options = (
            {"temperature": 0, "num_predict": 16, "seed": 1}
            if i == 0
            else {"temperature": 0.7, "num_predict": 16, "seed": 1 + i}
        )
        result = self.caller.chat(self.model, messages, options=options, format=LLM_FORMAT)
        try:
            level = json.loads(result.content)["level"]
        except (ValueError, KeyError, TypeError):
            return ""
        return level if level in LEVELS else ""

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(LEVELS)), dtype=np.float32)
        for row, text in enumerate(texts):
            for i in range(self.votes):
                level = self._vote(text, i)
                if level:
                    out[row, LEVELS.index(level)] += 1
            total = out[row].sum()
            # No usable vote at all: no information, so a flat row (and a low confidence).
            out[row] = out[row] / total if total else 1.0 / len(LEVELS)
        return out


def _few_shot(train: list[LabeledQuery], per_class: int = 2) -> list[LabeledQuery]:
    """The shortest training examples of each class: cheap context for a small model."""
    shots: list[LabeledQuery] = []
    for level in LEVELS:
        shots += sorted((q for q in train if q.label == level), key=lambda q: len(q.text))[per_class : 2 * per_class]
    order = [1, 3, 5, 0, 2, 4]  # interleave the classes so the last example does not bias the answer
    return [shots[i] for i in order if i < len(shots)]
