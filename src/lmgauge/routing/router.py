"""The Router: picks a tier per request and escalates when an answer fails a check.

    router = Router.from_settings(client)              # tiers and classifier from [routing]
    decision = router.route(messages)                  # Decision(tier, model, confidence, reason)
    answer = router.answer(messages, options={"temperature": 0})
    answer.result.content, answer.decision, answer.attempts   # attempts: which tiers ran and why

Below `confidence_threshold` the router goes one tier up: a request sent too low costs a bad
answer, one sent too high only costs time. Each routed request is logged (the `lmgauge.routing`
logger) and, with a store, written to the `route_log` table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from ..config import RoutingSettings, Settings
from ..embedding import Embedder, make_embedder
from ..errors import InvalidOptionError
from ..types import Format, Message
from .classifier import Classifier, OnlyTier, default_classifier
from .escalation import Attempt, RoutedAnswer, RoutedStream
from .features import request_text
from .llm_classifier import LLMClassifier
from .saved import calibrated_path, load_calibrated
from .tiers import Decision, Tier, spread, tiers_from_settings

log = logging.getLogger("lmgauge.routing")

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
    def from_settings(
        cls, caller: Any, settings: Settings | None = None, *, classifier: str | None = None, store: Any = None
    ) -> Router:
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
            tier=tier.name,
            model=tier.model,
            confidence=confidence,
            reason=reason,
            index=index,
            label=label,
            probabilities={c: float(p) for c, p in zip(self.classifier.classes, probs, strict=True)},
            classifier=self.classifier.name,
            overhead_ms=(time.perf_counter_ns() - t0) / 1e6,
        )

    # --- answering -------------------------------------------------------------------------------
    def answer(
        self,
        messages: Iterable[Message | dict[str, Any]],
        *,
        options: Any = None,
        format: Format = None,
        tools: list[dict[str, Any]] | None = None,
        keep_alive: Any = None,
        decision: Decision | None = None,
    ) -> RoutedAnswer:
        """Route, answer, and escalate while an answer fails `check_answer` and a tier is left."""
        stream = self.answer_stream(
            messages, options=options, format=format, tools=tools, keep_alive=keep_alive, decision=decision
        )
        for _ in stream:
            pass
        assert stream.result is not None and stream.decision is not None
        return RoutedAnswer(stream.result, stream.decision, stream.attempts)

    def answer_stream(
        self,
        messages: Iterable[Message | dict[str, Any]],
        *,
        options: Any = None,
        format: Format = None,
        tools: list[dict[str, Any]] | None = None,
        keep_alive: Any = None,
        decision: Decision | None = None,
    ) -> RoutedStream:
        """Like `answer`, as a stream of Chunks (the last carries the Result). An attempt that a
        later tier may replace is held back until it passes its check, so the caller only ever
        sees the answer it gets; with escalation off, or on the last tier, chunks flow live."""
        msgs = [m if isinstance(m, Message) else Message.from_dict(m) for m in messages]
        return RoutedStream(
            self, msgs, dict(options=options, format=format, tools=tools, keep_alive=keep_alive), decision
        )

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
                (
                    time.time(),
                    decision.classifier,
                    decision.label,
                    decision.confidence,
                    decision.tier,
                    attempts[-1].tier,
                    json.dumps([asdict(a) for a in attempts]),
                    decision.overhead_ms,
                    chars,
                ),
            )


def router_embedder(name: str, client: Any = None) -> Embedder:
    """The feature classifier's embedder (it compares queries with labeled examples by embedding)."""
    embedder = make_embedder(name, client)
    if embedder is None:
        raise InvalidOptionError(
            "routing.embedder cannot be 'none' (the feature classifier compares queries "
            "by embedding); use 'wordllama' (offline) or an embedding model"
        )
    return embedder
