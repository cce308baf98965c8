"""What the feature classifier reads in a request: hand-made features of its text.

Length, structure, code and math signals, words that ask for design or analysis: cheap (~µs) and
stable across embedders, they carry what an embedding of a short question misses ("write 2,000
words on ..." looks like a simple question to an embedding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..types import Message

_WORD = re.compile(r"[A-Za-z][A-Za-z'+#-]*")
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+|\bimport \w+|\breturn\b|=>|\w+\(\w*\)|[{};]\s*$|</?\w+>|\$\w+|::",
    re.MULTILINE,
)
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)
_LENGTH_ASK = re.compile(r"\b\d[\d,]*[- ]words?\b|\bwords?\b.*\b\d+\b|\bparagraphs?\b|\bpages?\b|\bchapters?\b")

CODE_WORDS = frozenset(
    "python javascript typescript sql function code script regex regular bash api json yaml css html "
    "git docker kubernetes rust go java c++ c# query class algorithm compile compiler debug bug refactor "
    "implement program server database index thread async crawler parser unit tests pytest react".split()
)
MATH_WORDS = frozenset(
    "prove proof derive derivation calculate solve equation integral derivative probability variance "
    "theorem maximize minimize compute formula percent interest rate average".split()
)
DEPTH_WORDS = frozenset(
    "design architecture trade-offs tradeoffs trade-off analyze analyse analysis evaluate critically "
    "plan strategy comprehensive detailed optimize migrate migration framework implications risks "
    "propose recommendation recommend roadmap assumptions justify weigh prioritize consequences "
    "step-by-step thorough complete full".split()
)
TASK_VERBS = frozenset(
    "write explain describe compare implement design list give summarize create build draft plan "
    "analyze analyse evaluate propose derive prove translate convert rewrite suggest debug review".split()
)
SIMPLE_STARTS = (
    "what is",
    "what's",
    "whats",
    "who ",
    "when ",
    "where ",
    "which ",
    "how many",
    "how much",
    "define",
    "translate",
    "convert",
    "is ",
    "are ",
    "spell",
    "name ",
    "give me a ",
    "what does",
    "what year",
    "say ",
    "hi",
    "hello",
    "thanks",
    "thank you",
    "good ",
)
CONSTRAINTS = (
    "must",
    "without",
    "at least",
    "at most",
    "including",
    "include",
    "each",
    "every",
    "then",
    "and explain",
    "and how",
    "step by step",
    "and why",
    "then explain",
)

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "lines",
    "sentences",
    "commas",
    "ands",
    "questions",
    "digit_share",
    "code_marks",
    "code_words",
    "math_words",
    "depth_words",
    "task_verbs",
    "simple_start",
    "list_items",
    "constraints",
    "length_ask",
    "mean_word_len",
    "quoted_or_pasted",
)


def text_features(text: str) -> np.ndarray:
    """Hand-made features of a request's text (see FEATURE_NAMES), as float32."""
    lower = text.lower().strip()
    words = _WORD.findall(lower)
    n_words = len(words)
    word_set = words
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(n_words),
            text.count("\n"),
            len(re.findall(r"[.!?](?:\s|$)", text)) or 1,
            text.count(","),
            sum(1 for w in words if w == "and"),
            text.count("?"),
            sum(c.isdigit() for c in text) / max(len(text), 1),
            len(_CODE.findall(text)),
            sum(1 for w in word_set if w in CODE_WORDS),
            sum(1 for w in word_set if w in MATH_WORDS),
            sum(1 for w in word_set if w in DEPTH_WORDS),
            sum(1 for w in word_set if w in TASK_VERBS),
            float(lower.startswith(SIMPLE_STARTS)),
            len(_LIST_ITEM.findall(text)),
            sum(lower.count(c) for c in CONSTRAINTS),
            float(bool(_LENGTH_ASK.search(lower))),
            (sum(len(w) for w in words) / n_words) if n_words else 0.0,
            float("\n" in text.strip() or text.count("'") >= 2 or text.count('"') >= 2),
        ],
        dtype=np.float32,
    )


def request_text(messages: Iterable[Message | dict[str, Any]]) -> str:
    """What the classifier reads: the last user message (the request being answered now)."""
    msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in messages]
    for m in reversed(msgs):
        if m.role == "user":
            return m.content
    return msgs[-1].content if msgs else ""
