"""The context guard: measure every request in the model's own tokens before it runs.

A prompt that does not leave room for one output token is refused with a 400 that gives both
numbers, or, when `overflow = "compact"` is configured, handed to the context package's
compaction and measured again. It is never truncated silently. The count and the window go
back to the client in the `X-Lmgauge-Context: <prompt tokens>/<window>` header.

Where the gateway cannot count exactly (a remote model with no local tokenizer configured),
it does not guess: the request goes through unguarded and the node's own prompt_eval_count is
recorded afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import Settings
from ..errors import ContextOverflowError
from ..limits import check_prompt_fits
from ..types import ChatRequest, GenerateRequest, Message

HEADER = "X-Lmgauge-Context"


class Counter(Protocol):
    def prompt_tokens(self, request: ChatRequest | GenerateRequest) -> int | None: ...


# compact(messages, budget_tokens, count) -> messages that fit the budget. `count` gives the exact
# token count of a candidate list of messages. The real one is context.compaction.compact_to_budget,
# which app.py hands to the Gateway.
Compactor = Callable[[list[Message], int, Callable[[list[Message]], int]], list[Message]]


@dataclass
class Verdict:
    prompt_tokens: int | None
    window: int | None
    compacted: bool = False

    @property
    def used(self) -> float | None:
        if self.prompt_tokens is None or not self.window:
            return None
        return self.prompt_tokens / self.window

    def header(self) -> dict[str, str]:
        if self.prompt_tokens is None or self.window is None:
            return {}
        return {HEADER: f"{self.prompt_tokens}/{self.window}"}


def overflow_policy(settings: Settings) -> str:
    """`[context] overflow` when set, else `[gateway] overflow` (refuse by default)."""
    return settings.context.overflow or settings.gateway.overflow


def check(
    backend: Counter,
    request: ChatRequest | GenerateRequest,
    window: int | None,
    policy: str,
    compactor: Compactor | None,
) -> Verdict:
    """Count, compare, and refuse or compact. Mutates request.messages when it compacts."""
    tokens = backend.prompt_tokens(request)
    if tokens is None or window is None:
        return Verdict(tokens, window)
    if policy != "compact" or not isinstance(request, ChatRequest):
        check_prompt_fits(tokens, window)  # the rule the engine and the CLI apply: refused, never truncated
        return Verdict(tokens, window)
    if tokens < window:
        return Verdict(tokens, window)
    if compactor is None:
        raise ContextOverflowError(
            tokens, window, what="prompt (compaction is configured but this gateway was built without a compactor)"
        )

    def count(messages: list[Message]) -> int:
        trial = ChatRequest(model=request.model, messages=messages, tools=request.tools)
        return backend.prompt_tokens(trial) or 0

    budget = window - max(window // 8, 1)  # leave room to answer
    try:
        compacted = compactor(list(request.messages), budget, count)
    except ContextOverflowError:  # its numbers are the inner budget's: report the request's own
        raise ContextOverflowError(
            tokens,
            window,
            what="prompt (the system prompt and the last turn alone do not fit, so compaction cannot help)",
        ) from None
    after = count(compacted)
    check_prompt_fits(after, window, what="prompt after compaction")
    request.messages = compacted
    return Verdict(after, window, compacted=True)
