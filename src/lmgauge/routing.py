"""Send each request to the cheapest model that can answer it.

    router = Router.from_settings(client)              # tiers and classifier from [routing]
    decision = router.route(messages)                  # Decision(tier, model, confidence, reason)
    answer = router.answer(messages, options={"temperature": 0})
    answer.result.content, answer.decision, answer.attempts   # attempts: which tiers ran and why

Tiers are model names, cheapest first (`[routing] tiers = {small = "smollm2", large = "..."}`).
A classifier says how much model a request needs and how sure it is:

- `FeatureClassifier` (default, ~1 ms): hand-made features of the text (length, structure, code
  and math signals, words that ask for design or analysis), its similarity to labeled examples
  (the mean cosine similarity of its k nearest neighbours in each class, WordLlama embeddings)
  and the embedding itself, into a multinomial logistic regression (numpy).
- `LLMClassifier`: asks a model, whose output is constrained to the labels by a JSON schema
  with an enum; its confidence is the agreement of a few sampled votes.

The classifier's classes are either difficulty levels (simple/moderate/complex, the shipped
labeled set) spread over the tiers, or the tiers themselves (a router fitted by
`lmgauge route calibrate` on which tier actually answered each prompt correctly).

Below `confidence_threshold` the router goes one tier up: a request sent too low costs a bad
answer, one sent too high only costs time. After answering, `check_answer` looks for the ways a
small model visibly fails (empty, cut off at the token limit, invalid JSON when JSON was asked,
a refusal); on a failure the next tier answers, and each attempt is kept with its reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import RoutingSettings, Settings
from .embedding import Embedder, make_embedder
from .errors import (
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    InvalidOptionError,
    LmgaugeError,
)
from .types import ChatRequest, Chunk, Format, Message, Result

log = logging.getLogger("lmgauge.routing")

LEVELS = ("simple", "moderate", "complex")

# Errors after which a bigger tier may still answer: a model or its server failing, or a prompt
# too long for a smaller window. A bad option or unknown model is the caller's to fix.
ESCALATING_ERRORS = (EngineError, EngineUnavailableError, EngineBusyError, ContextOverflowError)


# --- the labeled set ----------------------------------------------------------------------------


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
        LabeledQuery(i["id"], i["text"], i["label"], i["split"])
        for i in items
        if split is None or i["split"] == split
    ]


# --- features -----------------------------------------------------------------------------------

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
    "what is", "what's", "whats", "who ", "when ", "where ", "which ", "how many", "how much", "define",
    "translate", "convert", "is ", "are ", "spell", "name ", "give me a ", "what does", "what year",
    "say ", "hi", "hello", "thanks", "thank you", "good ",
)
CONSTRAINTS = ("must", "without", "at least", "at most", "including", "include", "each", "every",
               "then", "and explain", "and how", "step by step", "and why", "then explain")

FEATURE_NAMES = (
    "log_chars", "log_words", "lines", "sentences", "commas", "ands", "questions", "digit_share",
    "code_marks", "code_words", "math_words", "depth_words", "task_verbs", "simple_start",
    "list_items", "constraints", "length_ask", "mean_word_len", "quoted_or_pasted",
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


# --- classifiers ----------------------------------------------------------------------------------


class Classifier(Protocol):
    name: str
    classes: tuple[str, ...]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """One row of class probabilities per text (columns in `classes` order)."""
        ...


class OnlyTier:
    """The classifier when there is a single tier (no `[routing] tiers`: the default model):
    there is nothing to decide, so no embedder is loaded and no time is spent."""

    name = "single tier"

    def __init__(self, tier: str):
        self.classes = (tier,)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 1))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1.0,
                 iterations: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty, by full-batch gradient descent with
    Nesterov momentum (a few hundred rows: exact enough and ~50 ms). Returns (weights, bias)."""
    n, d = x.shape
    onehot = np.eye(n_classes, dtype=np.float64)[y]
    w = np.zeros((d, n_classes))
    b = np.zeros(n_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr, momentum = 0.5, 0.9
    x64 = x.astype(np.float64)
    for _ in range(iterations):
        wl, bl = w + momentum * vw, b + momentum * vb  # look-ahead point
        p = _softmax(x64 @ wl + bl)
        grad_w = x64.T @ (p - onehot) / n + l2 * wl / n
        grad_b = (p - onehot).mean(axis=0)
        vw = momentum * vw - lr * grad_w
        vb = momentum * vb - lr * grad_b
        w, b = w + vw, b + vb
    return w.astype(np.float32), b.astype(np.float32)


class FeatureClassifier:
    """Features + kNN similarity to labeled examples + embedding -> logistic regression."""

    name = "features"

    def __init__(self, embedder: Embedder, k: int = 5, l2: float = 0.3):
        self.embedder = embedder
        self.k = k
        self.l2 = l2
        self.classes: tuple[str, ...] = ()
        self._bank: np.ndarray | None = None  # training embeddings (the kNN "examples")
        self._bank_labels: np.ndarray | None = None
        self._texts: list[str] = []
        self._labels: list[str] = []
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._w: np.ndarray | None = None
        self._b: np.ndarray | None = None

    # --- the design matrix ---------------------------------------------------------------------
    def _knn(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """Per class: mean cosine similarity of the k most similar labeled examples."""
        assert self._bank is not None and self._bank_labels is not None
        sims = emb @ self._bank.T
        if leave_one_out:  # a training example must not find itself
            np.fill_diagonal(sims, -np.inf)
        out = np.zeros((len(emb), len(self.classes)), dtype=np.float32)
        for c in range(len(self.classes)):
            cls_sims = sims[:, self._bank_labels == c]
            k = min(self.k, cls_sims.shape[1] - (1 if leave_one_out else 0))
            if k <= 0:
                continue
            top = -np.sort(-cls_sims, axis=1)[:, :k]
            out[:, c] = top.mean(axis=1)
        return out

    def _design(self, texts: list[str], emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        hand = np.stack([text_features(t) for t in texts]) if texts else np.zeros((0, len(FEATURE_NAMES)))
        assert self._mean is not None and self._std is not None
        hand = (hand - self._mean) / self._std
        return np.hstack([hand, 4.0 * self._knn(emb, leave_one_out), emb]).astype(np.float32)

    # --- fitting and predicting ----------------------------------------------------------------
    def fit(self, texts: list[str], labels: list[str], classes: Iterable[str] | None = None) -> FeatureClassifier:
        if len(texts) != len(labels) or not texts:
            raise InvalidOptionError("the router needs labeled examples to learn from")
        self.classes = tuple(classes) if classes is not None else tuple(sorted(set(labels), key=_level_order))
        unknown = set(labels) - set(self.classes)
        if unknown:
            raise InvalidOptionError(f"labels {sorted(unknown)} are not among the classes {self.classes}")
        self._texts, self._labels = list(texts), list(labels)
        y = np.array([self.classes.index(label) for label in labels])
        emb = self.embedder.embed(list(texts))
        self._bank, self._bank_labels = emb, y
        hand = np.stack([text_features(t) for t in texts])
        self._mean = hand.mean(axis=0)
        self._std = hand.std(axis=0) + 1e-6
        x = self._design(list(texts), emb, leave_one_out=True)
        self._w, self._b = fit_logistic(x, y, len(self.classes), l2=self.l2)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self._w is None:
            raise InvalidOptionError("the feature classifier is not trained yet (call fit)")
        emb = self.embedder.embed(list(texts))
        return _softmax(self._design(list(texts), emb) @ self._w + self._b)

    # --- persistence: the examples and hyper-parameters; weights are refitted on load ------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "k": self.k, "l2": self.l2, "classes": list(self.classes),
                "texts": self._texts, "labels": self._labels, "embedder": self.embedder.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any], embedder: Embedder) -> FeatureClassifier:
        """Refit from the stored examples: deterministic, ~0.1 s, and valid for whichever
        embedder is configured now (stored weights would silently depend on the old one)."""
        return cls(embedder, k=data.get("k", 5), l2=data.get("l2", 0.3)).fit(
            data["texts"], data["labels"], classes=data["classes"]
        )


def _level_order(label: str) -> tuple[int, str]:
    return (LEVELS.index(label) if label in LEVELS else len(LEVELS), label)


def default_classifier(embedder: Embedder, split: str | None = None) -> FeatureClassifier:
    """The feature classifier trained on the shipped labeled set (both splits unless told)."""
    data = load_queries(split)
    return FeatureClassifier(embedder).fit([q.text for q in data], [q.label for q in data], classes=LEVELS)


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
    classes = LEVELS

    def __init__(self, caller: Any, model: str, votes: int = 3, examples: list[LabeledQuery] | None = None):
        self.caller = caller
        self.model = model
        self.votes = votes
        shots = examples if examples is not None else _few_shot(load_queries("train"))
        self._shots: list[dict[str, str]] = []
        for q in shots:
            self._shots += [{"role": "user", "content": q.text},
                            {"role": "assistant", "content": json.dumps({"level": q.label})}]

    def _vote(self, text: str, i: int) -> str:
        messages = [{"role": "system", "content": LLM_SYSTEM}, *self._shots, {"role": "user", "content": text}]
        options = {"temperature": 0, "num_predict": 16, "seed": 1} if i == 0 else \
            {"temperature": 0.7, "num_predict": 16, "seed": 1 + i}
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
        shots += sorted((q for q in train if q.label == level), key=lambda q: len(q.text))[per_class:2 * per_class]
    order = [1, 3, 5, 0, 2, 4]  # interleave the classes so the last example does not bias the answer
    return [shots[i] for i in order if i < len(shots)]


# --- the router -----------------------------------------------------------------------------------


def spread(position: int, n_classes: int, n_tiers: int) -> int:
    """Class `position` of `n_classes` ordered ones onto `n_tiers` tiers, evenly; halfway rounds up
    (three levels on two tiers: moderate goes to the larger one, quality first)."""
    return math.floor(position * (n_tiers - 1) / max(n_classes - 1, 1) + 0.5)


@dataclass(frozen=True)
class Tier:
    name: str
    model: str


@dataclass
class Decision:
    tier: str
    model: str
    confidence: float  # the classifier's probability for its chosen class
    reason: str
    index: int  # position of the tier, 0 = cheapest
    label: str  # the classifier's class (a difficulty level, or a tier name when calibrated)
    probabilities: dict[str, float] = field(default_factory=dict)
    classifier: str = ""
    overhead_ms: float = 0.0  # time spent deciding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Attempt:
    tier: str
    model: str
    status: str  # "ok" | "failed_check" | "error"
    reason: str | None = None  # why the next tier was tried
    e2e_ms: float | None = None


@dataclass
class RoutedAnswer:
    result: Result
    decision: Decision
    attempts: list[Attempt]

    @property
    def tier(self) -> str:
        """The tier whose answer this is (after any escalation)."""
        return self.attempts[-1].tier

    @property
    def escalated(self) -> bool:
        return len(self.attempts) > 1


REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry,? but |sorry,? but |unfortunately,? )?(?:i|as an ai[^,.]*,? i)\s+"
    r"(?:can(?:no|')t|cannot|am (?:not able|unable)|'m (?:not able|unable)|won'?t|do not|don'?t)\s+(?:to\s+)?"
    r"(?:help|assist|answer|provide|comply|do that|fulfil|fulfill|respond|complete)",
    re.IGNORECASE,
)


def check_answer(result: Result, format: Format = None) -> str | None:
    """Why an answer visibly failed, or None when it looks usable. What it catches is what a
    bigger model fixes: nothing said, a cut-off answer, broken JSON, a refusal."""
    text = result.content.strip()
    if not text and not result.tool_calls:
        return "empty answer"
    if result.done_reason == "length":
        return "cut off at the token limit (num_predict or the context window)"
    if format is not None and not result.tool_calls:
        try:
            value = json.loads(text)
        except ValueError:
            return "invalid JSON (JSON was asked)"
        if isinstance(format, dict):
            missing = _missing_keys(value, format)
            if missing:
                return f"JSON lacks required fields: {', '.join(missing)}"
    if REFUSAL.search(text[:300]):
        return "refused to answer"
    return None


def _missing_keys(value: Any, schema: dict[str, Any]) -> list[str]:
    required = schema.get("required") or []
    if schema.get("type") == "object" and not isinstance(value, dict):
        return list(required) or ["(an object)"]
    if not isinstance(value, dict):
        return []
    return [k for k in required if k not in value]


ROUTE_LOG_DDL = [
    """
    CREATE TABLE IF NOT EXISTS route_log (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        classifier TEXT NOT NULL,
        label TEXT NOT NULL,          -- the classifier's class
        confidence REAL NOT NULL,
        first_tier TEXT NOT NULL,     -- the tier the decision chose
        final_tier TEXT NOT NULL,     -- the tier that answered (after escalation)
        attempts TEXT NOT NULL,       -- JSON: [{tier, model, status, reason, e2e_ms}]
        overhead_ms REAL,
        query_chars INTEGER           -- the request's length (its text is not stored)
    )
    """,
    "CREATE INDEX IF NOT EXISTS route_log_ts ON route_log(ts)",
]


class Router:
    """Picks a tier per request and escalates when an answer fails a check.

    `caller` is anything with the Client's `chat_stream(model, messages, **kw)` (a Client, or a
    resilience.ResilientClient so each tier also gets retries, breakers and timeouts)."""

    def __init__(
        self,
        caller: Any,
        tiers: list[Tier],
        classifier: Classifier,
        *,
        threshold: float = 0.5,
        escalate: bool = True,
        store: Any = None,
    ):
        if not tiers:
            raise InvalidOptionError("routing needs at least one tier ([routing] tiers in the config)")
        self.caller = caller
        self.tiers = list(tiers)
        self.classifier = classifier
        self.threshold = threshold
        self.escalate = escalate
        self.store = store
        if store is not None:
            store.ensure(ROUTE_LOG_DDL)

    # --- construction from settings --------------------------------------------------------------
    @classmethod
    def from_settings(cls, caller: Any, settings: Settings | None = None, *,
                      classifier: str | None = None, store: Any = None) -> Router:
        settings = settings or caller.settings
        rs: RoutingSettings = settings.routing
        tiers = tiers_from_settings(settings)
        kind = classifier or rs.classifier
        if len(tiers) == 1 and classifier is None:
            clf: Classifier = OnlyTier(tiers[0].name)
        elif kind == "llm":
            clf = LLMClassifier(caller, rs.llm_model or tiers[0].model, votes=rs.llm_votes)
        elif kind == "features":
            embedder = router_embedder(rs.embedder, caller)
            clf = load_calibrated(calibrated_path(settings), tiers, embedder) or default_classifier(embedder)
        else:
            raise InvalidOptionError(f"unknown classifier {kind!r}; use 'features' or 'llm'")
        return cls(caller, tiers, clf, threshold=rs.confidence_threshold, escalate=rs.escalate, store=store)

    # --- deciding --------------------------------------------------------------------------------
    def _tier_index(self, label: str) -> int:
        names = [t.name for t in self.tiers]
        if label in names:  # a calibrated classifier's classes are the tiers
            return names.index(label)
        return spread(self.classifier.classes.index(label), len(self.classifier.classes), len(self.tiers))

    def route(self, messages: Iterable[Message | dict[str, Any]]) -> Decision:
        """Choose a tier for a conversation (no model is called, unless the classifier is an LLM)."""
        t0 = time.perf_counter_ns()
        text = request_text(messages)
        probs = self.classifier.predict_proba([text])[0]
        best = int(np.argmax(probs))
        label = self.classifier.classes[best]
        confidence = float(probs[best])
        index = self._tier_index(label)
        reason = f"{self.classifier.name} classifier: {label} ({confidence:.2f})"
        if confidence < self.threshold and index < len(self.tiers) - 1:
            index += 1
            reason += f", below the {self.threshold:.2f} confidence threshold: one tier up"
        tier = self.tiers[index]
        return Decision(
            tier=tier.name, model=tier.model, confidence=confidence, reason=reason, index=index,
            label=label, probabilities={c: float(p) for c, p in zip(self.classifier.classes, probs)},
            classifier=self.classifier.name, overhead_ms=(time.perf_counter_ns() - t0) / 1e6,
        )

    # --- answering -------------------------------------------------------------------------------
    def answer(self, messages: Iterable[Message | dict[str, Any]], *, options: Any = None,
               format: Format = None, tools: list[dict[str, Any]] | None = None, keep_alive: Any = None,
               decision: Decision | None = None) -> RoutedAnswer:
        """Route, answer, and escalate while an answer fails `check_answer` and a tier is left."""
        stream = self.answer_stream(messages, options=options, format=format, tools=tools,
                                    keep_alive=keep_alive, decision=decision)
        for _ in stream:
            pass
        assert stream.result is not None and stream.decision is not None
        return RoutedAnswer(stream.result, stream.decision, stream.attempts)

    def answer_stream(self, messages: Iterable[Message | dict[str, Any]], *, options: Any = None,
                      format: Format = None, tools: list[dict[str, Any]] | None = None,
                      keep_alive: Any = None, decision: Decision | None = None) -> RoutedStream:
        """Like `answer`, as a stream of Chunks (the last carries the Result). An attempt that a
        later tier may replace is held back until it passes its check, so the caller only ever
        sees the answer it gets; with escalation off, or on the last tier, chunks flow live."""
        msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in messages]
        return RoutedStream(self, msgs, dict(options=options, format=format, tools=tools,
                                             keep_alive=keep_alive), decision)

    def _log(self, decision: Decision, attempts: list[Attempt], chars: int) -> None:
        for a in attempts:
            if a.reason:
                log.info("routing: %s (%s) %s: %s", a.tier, a.model, a.status, a.reason)
        if self.store is None:
            return
        with self.store.connect() as db:
            db.execute(
                "INSERT INTO route_log (ts, classifier, label, confidence, first_tier, final_tier, attempts,"
                " overhead_ms, query_chars) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), decision.classifier, decision.label, decision.confidence, decision.tier,
                 attempts[-1].tier, json.dumps([asdict(a) for a in attempts]), decision.overhead_ms, chars),
            )


class RoutedStream:
    """An iterator of Chunks for one routed request; `decision`, `attempts` and `result` are
    filled in as it runs (complete once the stream is exhausted)."""

    def __init__(self, router: Router, messages: list[Message], kwargs: dict[str, Any],
                 decision: Decision | None):
        self.router = router
        self.messages = messages
        self.kwargs = kwargs
        self.decision = decision
        self.attempts: list[Attempt] = []
        self.result: Result | None = None
        self._iter = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def _run(self) -> Iterator[Chunk]:
        router = self.router
        if self.decision is None:
            self.decision = router.route(self.messages)
        fmt = self.kwargs.get("format")
        index = self.decision.index
        try:
            while True:
                tier = router.tiers[index]
                last = not router.escalate or index == len(router.tiers) - 1
                t0 = time.perf_counter_ns()
                held: list[Chunk] = []
                try:
                    stream = router.caller.chat_stream(tier.model, self.messages, **self.kwargs)
                    result = None
                    for chunk in stream:
                        if chunk.done:
                            result = chunk.result
                        if last:
                            if chunk.done:
                                break  # the final chunk is yielded below, after the bookkeeping
                            yield chunk
                        elif not chunk.done:
                            held.append(chunk)
                    assert result is not None
                except ESCALATING_ERRORS as exc:
                    if last:
                        self.attempts.append(Attempt(tier.name, tier.model, "error", str(exc),
                                                     (time.perf_counter_ns() - t0) / 1e6))
                        raise
                    self.attempts.append(Attempt(tier.name, tier.model, "error", f"error: {exc}",
                                                 (time.perf_counter_ns() - t0) / 1e6))
                    index += 1
                    continue
                why = check_answer(result, fmt)
                e2e = result.timings.e2e_ms
                if why is None or last:
                    self.attempts.append(Attempt(tier.name, tier.model, "ok" if why is None else "failed_check",
                                                 why, e2e))
                    self.result = result
                    yield from held
                    yield Chunk(done=True, result=result)
                    return
                self.attempts.append(Attempt(tier.name, tier.model, "failed_check", why, e2e))
                index += 1
        finally:
            if self.attempts:
                router._log(self.decision, self.attempts, len(request_text(self.messages)))


# --- settings and calibrated routers ----------------------------------------------------------------


def router_embedder(name: str, client: Any = None) -> Embedder:
    """The feature classifier's embedder (it compares queries with labeled examples by embedding)."""
    embedder = make_embedder(name, client)
    if embedder is None:
        raise InvalidOptionError("routing.embedder cannot be 'none' (the feature classifier compares queries "
                                 "by embedding); use 'wordllama' (offline) or an embedding model")
    return embedder


def tiers_from_settings(settings: Settings) -> list[Tier]:
    tiers = settings.routing.tiers
    if not tiers:
        return [Tier("default", settings.default_model)]
    return [Tier(name, model) for name, model in tiers.items()]


def parse_tiers(pairs: list[str]) -> dict[str, str]:
    """--tier NAME=MODEL flags (cheapest first) into an ordered dict."""
    tiers: dict[str, str] = {}
    for pair in pairs:
        name, sep, model = pair.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise InvalidOptionError(f"--tier {pair!r} must look like NAME=MODEL, e.g. small=smollm2")
        if name.strip() in tiers:
            raise InvalidOptionError(f"tier {name.strip()!r} is given twice")
        tiers[name.strip()] = model.strip()
    return tiers


def calibrated_path(settings: Settings) -> Path:
    return (settings.routing.calibrated or settings.home / "router.json").expanduser()


def save_calibrated(path: Path, tiers: list[Tier], classifier: FeatureClassifier,
                    report: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"tiers": {t.name: t.model for t in tiers}, "classifier": classifier.to_dict(),
            "report": report or {}, "created": time.time()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def load_calibrated(path: Path, tiers: list[Tier], embedder: Embedder) -> FeatureClassifier | None:
    """The router `route calibrate` fitted, if it was fitted for these same tiers."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidOptionError(f"cannot read the calibrated router {path}: {exc}; delete it or "
                                 "run `lmgauge route calibrate` again") from None
    if data.get("tiers") != {t.name: t.model for t in tiers}:
        log.warning("routing: %s was calibrated for other tiers (%s); using the default classifier",
                    path, data.get("tiers"))
        return None
    return FeatureClassifier.from_dict(data["classifier"], embedder)


def is_routing_error(exc: LmgaugeError) -> bool:
    """True for the errors after which a bigger tier may still answer."""
    return isinstance(exc, ESCALATING_ERRORS)


# --- the gateway's `auto` model ---------------------------------------------------------------------


class GatewayRouter:
    """What the gateway asks when a client sends model `auto`: the model of the tier the router
    picks. The gateway streams that model's answer as it comes, so there is no escalation after
    the fact there (`lmgauge run auto` and `lmgauge batch` escalate)."""

    def __init__(self, router: Router):
        self.router = router

    def choose(self, request: Any) -> str:
        messages = request.messages if isinstance(request, ChatRequest) else request.as_chat().messages
        decision = self.router.route(messages)
        log.info("auto -> %s (%s)", decision.model, decision.reason)
        return decision.model


def gateway_router(settings: Settings, client: Any) -> GatewayRouter:
    """The gateway's hook. `auto` means the same everywhere (CLI `run auto`, `route ask`, `batch
    auto`, the gateway): the tier the router picks among `[routing] tiers`, or the default model
    when no tiers are configured (one tier)."""
    return GatewayRouter(Router.from_settings(client, settings))
