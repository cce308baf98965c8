"""After an answer: did it visibly fail, and if so, the next tier answers.

`check_answer` looks for the ways a small model visibly fails (empty, cut off at the token limit,
invalid JSON when JSON was asked, a refusal); an engine error that a bigger tier may not have
(the model or its server failing, a prompt too long for a smaller window) escalates too. Each
attempt is kept with its reason. `RoutedStream` runs the loop for the CLI and the library;
the gateway runs the same rules in its own async loop (gateway/core.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    LmgaugeError,
)
from ..types import Chunk, Format, Message, Result
from .features import request_text
from .tiers import Decision

if TYPE_CHECKING:
    from .router import Router

# Errors after which a bigger tier may still answer: a model or its server failing, or a prompt
# too long for a smaller window. A bad option or unknown model is the caller's to fix.
ESCALATING_ERRORS = (EngineError, EngineUnavailableError, EngineBusyError, ContextOverflowError)


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


class RoutedStream:
    """An iterator of Chunks for one routed request; `decision`, `attempts` and `result` are
    filled in as it runs (complete once the stream is exhausted)."""

    def __init__(self, router: Router, messages: list[Message], kwargs: dict[str, Any], decision: Decision | None):
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

    def _run(self) -> Generator[Chunk, None, None]:
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
                        self.attempts.append(
                            Attempt(tier.name, tier.model, "error", str(exc), (time.perf_counter_ns() - t0) / 1e6)
                        )
                        raise
                    self.attempts.append(
                        Attempt(tier.name, tier.model, "error", f"error: {exc}", (time.perf_counter_ns() - t0) / 1e6)
                    )
                    index += 1
                    continue
                why = check_answer(result, fmt)
                e2e = result.timings.e2e_ms
                if why is None or last:
                    self.attempts.append(
                        Attempt(tier.name, tier.model, "ok" if why is None else "failed_check", why, e2e)
                    )
                    self.result = result
                    yield from held
                    yield Chunk(done=True, result=result)
                    return
                self.attempts.append(Attempt(tier.name, tier.model, "failed_check", why, e2e))
                index += 1
        finally:
            if self.attempts:
                router._log(self.decision, self.attempts, len(request_text(self.messages)))


def is_routing_error(exc: LmgaugeError) -> bool:
    """True for the errors after which a bigger tier may still answer."""
    return isinstance(exc, ESCALATING_ERRORS)
