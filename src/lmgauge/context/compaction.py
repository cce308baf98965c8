"""Compaction: make a conversation that is filling the window small again, keeping what matters.

Strategies (context.strategy):
  trim       the system prompt + the last turns that fit (at most keep_turns)
  summarize  the same, plus a running summary: the model takes notes on the dropped turns, added
             to the previous summary (never re-summarized from scratch); notes grown past
             summary_tokens are rewritten shorter
  hybrid     summarize + facts pinned from long-term memory (memory.py)
  none       no compaction: the window check refuses at 100%

A *turn* starts at a user message and runs to the next one, so an assistant's tool call and the
tool results that answer it always stay together; the last turn (the message being answered) is
always kept. A compaction aims at `target` of the prompt budget (default 50%), so that the
conversation can grow again for a while with a stable prefix (the engine's prefix cache keeps
working) before the next one.

    result = compact(messages, "hybrid", window, summarizer=Summarizer(client, model), memory=memory)
    result.messages, result.tokens_before, result.tokens_after, result.ms

Each compaction is logged to the store (table context_compactions) when a store is given.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..config import ContextSettings
from ..errors import ContextOverflowError, InvalidOptionError, LmgaugeError
from ..store import Store
from ..types import Message
from .memory import Memory, MemoryItem, pinned_block
from .tokens import TokenCounter, prefix_fingerprints
from .window import Budget, ContextWindow

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("lmgauge.context")

Strategy = Literal["trim", "summarize", "hybrid", "none"]
STRATEGIES = ("trim", "summarize", "hybrid", "none")

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS context_compactions (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        conversation TEXT,
        model TEXT,
        strategy TEXT NOT NULL,
        reason TEXT,                  -- what triggered it
        tokens_before INTEGER NOT NULL,
        tokens_after INTEGER NOT NULL,
        messages_before INTEGER NOT NULL,
        messages_after INTEGER NOT NULL,
        dropped INTEGER NOT NULL,     -- messages no longer verbatim in the prompt
        ms REAL NOT NULL,             -- time spent, summarizing included
        summary_tokens INTEGER,
        pinned INTEGER,
        warnings TEXT                 -- JSON list
    )
    """,
    "CREATE INDEX IF NOT EXISTS context_compactions_ts ON context_compactions(ts)",
    """
    CREATE TABLE IF NOT EXISTS context_summaries (
        model TEXT NOT NULL,
        prefix TEXT NOT NULL,         -- fingerprint of the messages folded so far
        n_messages INTEGER NOT NULL,
        summary TEXT NOT NULL,
        ts REAL NOT NULL,
        PRIMARY KEY (model, prefix)
    )
    """,
]

SUMMARY_HEADER = "Summary of the earlier conversation:"

NOTES_SYSTEM = "You take short notes on a conversation between a user and an assistant."

# The new turns alone, framed as a quoted document, the question last. Small models given "Summary
# so far: ... New messages: User: ..." continue the transcript instead of summarizing it (the 0.5B
# Qwen did so in 8 of 8 folds on the tuning seeds), so the earlier notes are not in this prompt.
NOTES_PROMPT = """Conversation:
\"\"\"
{transcript}
\"\"\"

What did the user say about themselves in this conversation (names, places, jobs, numbers, dates, \
preferences, plans, changes)? Answer in at most {words} words, in the third person ("The user \
..."), facts only, no advice."""

# Notes grown past their bound are rewritten once; the newest note wins where facts changed.
SHORTEN_PROMPT = """Notes about a user, oldest first:
\"\"\"
{notes}
\"\"\"

Rewrite these notes in at most {words} words, in the third person ("The user ..."). Keep every \
fact; when a fact changed, keep only its newest value. Facts only."""

# How a copy of the prompt starts: the transcript's role labels, or the prompt's own framing.
ECHO_MARKS = ("User:", "Assistant:", "System:", "Conversation:", '"""', "Notes about a user")


def copies_prompt(text: str) -> bool:
    """True when `text` writes out the conversation it was asked about (a line in the
    transcript's "User: ..." form, or the prompt's framing) instead of notes on it."""
    return any(line.strip().startswith(ECHO_MARKS) for line in text.splitlines())


def whole_sentences(text: str) -> str:
    """`text` up to its last sentence end (all of it when it has none)."""
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
    return text[: ends[-1]] if ends else text


@dataclass
class CompactionResult:
    messages: list[Message]  # the compacted conversation, ready to send
    strategy: str
    tokens_before: int
    tokens_after: int
    ms: float
    messages_before: int
    kept: list[Message]  # the verbatim turns kept (the head/system message excluded)
    dropped: int  # messages no longer verbatim in the prompt
    summary: str | None = None
    pinned: list[MemoryItem] = field(default_factory=list)
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def messages_after(self) -> int:
        return len(self.messages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "ms": round(self.ms, 1),
            "messages_before": self.messages_before,
            "messages_after": self.messages_after,
            "dropped": self.dropped,
            "summary": self.summary,
            "pinned": [m.text for m in self.pinned],
            "warnings": self.warnings,
        }

    def __str__(self) -> str:
        extra = ""
        if self.summary is not None:
            extra += ", summary updated"
        if self.pinned:
            extra += f", {len(self.pinned)} facts pinned"
        return (
            f"{self.strategy}: {self.tokens_before} -> {self.tokens_after} tokens in "
            f"{self.ms / 1000:.1f}s ({self.dropped} messages folded out{extra})"
        )


# --- turns ---------------------------------------------------------------------------------------


def turn_blocks(messages: list[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(leading system messages, turns). A turn starts at a user message; whatever precedes the
    first user message (after the system prompt) is a turn of its own. Tool calls and their
    results never start a turn, so they are never separated."""
    i = 0
    while i < len(messages) and messages[i].role == "system":
        i += 1
    head, blocks = messages[:i], list[list[Message]]()
    for m in messages[i:]:
        if m.role == "user" or not blocks:
            blocks.append([m])
        else:
            blocks[-1].append(m)
    return head, blocks


def should_compact(budget: Budget, n_messages: int, cfg: ContextSettings) -> str | None:
    """Why a conversation must be compacted now (the first trigger reached), or None."""
    if cfg.strategy == "none":
        return None
    if budget.fraction >= cfg.compact_at:
        return f"prompt at {budget.fraction:.0%} of the budget (compact_at {cfg.compact_at:.0%})"
    if cfg.compact_at_tokens is not None and budget.used >= cfg.compact_at_tokens:
        return f"prompt at {budget.used} tokens (compact_at_tokens {cfg.compact_at_tokens})"
    if cfg.compact_at_messages is not None and n_messages >= cfg.compact_at_messages:
        return f"{n_messages} messages (compact_at_messages {cfg.compact_at_messages})"
    return None


def compose_system(base: str, summary: str | None, pinned: list[MemoryItem] | None = None) -> str:
    parts = [base.strip()] if base.strip() else []
    if summary:
        parts.append(f"{SUMMARY_HEADER}\n{summary.strip()}")
    block = pinned_block(pinned or [])
    if block:
        parts.append(block)
    return "\n\n".join(parts)


def transcript(messages: list[Message]) -> str:
    lines = []
    for m in messages:
        who = {
            "user": "User",
            "assistant": "Assistant",
            "tool": f"Tool {m.tool_name or ''}".strip(),
            "system": "System",
        }.get(m.role, m.role)
        text = m.content
        if m.tool_calls:
            text += " [calls " + ", ".join(str(c.get("function", c).get("name", "?")) for c in m.tool_calls) + "]"
        lines.append(f"{who}: {text}")
    return "\n".join(lines)


def split_text(text: str, fits: Any) -> list[str]:
    """Cut text into consecutive pieces for which `fits(piece)` holds, at line ends when one is
    near (binary search for the longest prefix that fits)."""
    pieces, rest = [], text
    while rest:
        if fits(rest):
            pieces.append(rest)
            break
        lo, hi = 1, len(rest)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(rest[:mid]):
                lo = mid
            else:
                hi = mid - 1
        cut = rest.rfind("\n", 0, lo) + 1
        if cut < lo // 2:
            cut = lo
        pieces.append(rest[:cut])
        rest = rest[cut:]
    return pieces


# --- summarizing ---------------------------------------------------------------------------------


class Summarizer:
    """Folds messages into a running summary with a model.

    `fold(previous, messages)` folds new messages into a known summary (what a chat session
    does): the model writes notes on the new messages alone, added to the summary; when that
    passes `max_tokens` the model rewrites the notes shorter (keeping the newest value of a
    changed fact), and if it cannot, the oldest notes go. An answer that copies the transcript
    instead of taking notes (small models do: "Summary so far: ... User: ...") is not used;
    `problems` says what went wrong in the last fold.

    `fold_from_start(messages)` is for callers that hold no state (the gateway gets the whole
    history with every request): it finds the longest prefix already folded (cached in the
    store by fingerprint) and folds only what follows."""

    def __init__(
        self,
        client: Client,
        model: str,
        counter: TokenCounter,
        num_ctx: int,
        max_tokens: int = 200,
        store: Store | None = None,
        options: dict[str, Any] | None = None,
    ):
        self.client = client
        self.model = model
        self.counter = counter
        self.num_ctx = num_ctx
        self.max_tokens = max_tokens
        self.store = store
        self.options = {"temperature": 0, "seed": 11, "num_ctx": num_ctx, "num_predict": max_tokens, **(options or {})}
        self.calls = 0
        self.problems: list[str] = []  # what went wrong in the last fold (compaction warnings)
        if store is not None:
            store.ensure(SCHEMA)

    @property
    def words(self) -> int:
        return max(20, int(self.max_tokens * 0.6))

    @property
    def room(self) -> int:
        """Tokens a prompt may take: the window less the answer (and a few for the template)."""
        return self.num_ctx - self.max_tokens - 8

    def _prompt(self, messages: list[Message]) -> list[Message]:
        body = NOTES_PROMPT.format(transcript=transcript(messages), words=self.words)
        return [Message("system", NOTES_SYSTEM), Message("user", body)]

    def _batches(self, messages: list[Message]) -> list[list[Message]]:
        """Groups of messages each small enough to take notes on in one call (with room for the
        answer)."""
        room = self.room
        fixed = self.counter.count(self._prompt([Message("user", "")]))
        if room - fixed <= 16:
            raise InvalidOptionError(
                f"num_ctx {self.num_ctx} is too small to summarize with summary_tokens {self.max_tokens}"
            )
        batches: list[list[Message]] = []
        current: list[Message] = []
        for m in messages:
            pieces = [m]
            if self.counter.count_text(m.content) > room - fixed:
                fits = lambda text: self.counter.count_text(text) <= room - fixed  # noqa: E731  a short factory, read where it is used
                pieces = [Message(m.role, p, tool_name=m.tool_name) for p in split_text(m.content, fits)]
            for piece in pieces:
                trial = current + [piece]
                if current and self.counter.count(self._prompt(trial)) > room:
                    batches.append(current)
                    current = [piece]
                else:
                    current = trial
        if current:
            batches.append(current)
        return batches

    def _ask(self, prompt: list[Message]) -> str | None:
        """The model's notes, or None when it returned nothing or copied its prompt. Notes cut
        off at max_tokens end at their last whole sentence."""
        result = self.client.chat(self.model, prompt, options=self.options)
        self.calls += 1
        text = result.content.strip()
        if text and result.done_reason == "length":
            text = whole_sentences(text)
        if not text:
            problem = "returned nothing"
        elif copies_prompt(text):
            problem = "copied its prompt"
        else:
            return text
        self.problems.append(f"the summarizer {problem}; its answer is not used")
        log.warning(self.problems[-1])
        return None

    def fold(self, previous: str | None, messages: list[Message]) -> str:
        """The previous summary with notes on `messages` added (a call per batch that fits the
        summarizer's window), rewritten once if that grew past `max_tokens`."""
        self.problems = []
        notes = [previous.strip()] if previous and previous.strip() else []
        for batch in self._batches(messages):
            text = self._ask(self._prompt(batch))
            if text:
                notes.append(text)
        summary = "\n".join(notes)
        if self.counter.count_text(summary) <= self.max_tokens:
            return summary
        return self._shorten(notes)

    def _shorten(self, notes: list[str]) -> str:
        """Notes past the bound, rewritten by the model; if that fails, the newest notes that fit
        (the oldest go first, and the log says so)."""
        text = "\n".join(notes)
        prompt = [Message("system", NOTES_SYSTEM), Message("user", SHORTEN_PROMPT.format(notes=text, words=self.words))]
        if self.counter.count(prompt) <= self.room:
            shorter = self._ask(prompt)
            if shorter and self.counter.count_text(shorter) <= self.max_tokens:
                return shorter
        kept = list(notes)
        while len(kept) > 1 and self.counter.count_text("\n".join(kept)) > self.max_tokens:
            kept.pop(0)
        self.problems.append(
            f"the summary could not be shortened; its {len(notes) - len(kept)} oldest note(s) were dropped"
        )
        log.warning(self.problems[-1])
        return "\n".join(kept)

    def fold_from_start(self, messages: list[Message]) -> str:
        self.problems = []
        prefixes = prefix_fingerprints(messages)
        start, previous = 0, None
        if self.store is not None and messages:
            marks = ",".join("?" * len(prefixes))
            with self.store.connect() as db:
                row = db.execute(
                    f"SELECT n_messages, summary FROM context_summaries WHERE model = ? AND prefix IN ({marks}) "
                    "ORDER BY n_messages DESC LIMIT 1",
                    [self.model, *prefixes],
                ).fetchone()
            if row is not None:
                start, previous = row[0], row[1]
        if start == len(messages):
            return previous or ""
        summary = self.fold(previous, messages[start:])
        if self.store is not None and messages:
            with self.store.connect() as db:
                db.execute(
                    "INSERT OR REPLACE INTO context_summaries VALUES (?, ?, ?, ?, ?)",
                    (self.model, prefixes[-1], len(messages), summary, time.time()),
                )
        return summary


# --- compaction ----------------------------------------------------------------------------------


def compact(
    messages: list[Message],
    strategy: Strategy,
    window: ContextWindow,
    *,
    summarizer: Summarizer | None = None,
    memory: Memory | None = None,
    previous_summary: str | None = None,
    keep_turns: int = 4,
    target: float = 0.5,
    memory_tokens: int = 256,
    reason: str = "",
    store: Store | None = None,
    conversation: str | None = None,
    model: str | None = None,
) -> CompactionResult:
    """Compact `messages` (see the module docstring). `previous_summary`: the summary a stateful
    caller already holds (its turns are no longer in `messages`); without it, a summarizer
    folds the dropped turns from the start, reusing what it folded before for the same prefix.
    Raises ContextOverflowError when even the system prompt and the last turn do not fit."""
    if strategy not in STRATEGIES or strategy == "none":
        raise InvalidOptionError(f"compaction strategy must be trim, summarize or hybrid, not {strategy!r}")
    if strategy in ("summarize", "hybrid") and summarizer is None:
        raise InvalidOptionError(f"the {strategy} strategy needs a summarizer (a model to summarize with)")
    t0 = time.perf_counter()
    counter = window.counter
    tokens_before = counter.count(messages)
    head, blocks = turn_blocks(messages)
    base = "\n\n".join(m.content for m in head)
    warnings: list[str] = []

    pinned: list[MemoryItem] = []
    if strategy == "hybrid" and memory is not None and memory_tokens > 0:
        pinned = memory.pinned(counter, memory_tokens)
    summarizing = strategy in ("summarize", "hybrid")
    goal = int(target * window.limit)
    # Room the summary may take (its length is capped by the summarizer's num_predict).
    summary_room = summarizer.max_tokens if summarizing and summarizer is not None else 0

    def prompt(kept_blocks: list[list[Message]], summary: str | None) -> list[Message]:
        system = compose_system(base, summary, pinned)
        return ([Message("system", system)] if system else []) + [m for b in kept_blocks for m in b]

    n_keep = min(keep_turns, len(blocks))
    while n_keep > 1:
        kept_blocks = blocks[len(blocks) - n_keep :]
        if counter.count(prompt(kept_blocks, previous_summary)) + summary_room <= goal:
            break
        n_keep -= 1
    kept_blocks = blocks[len(blocks) - n_keep :] if n_keep else []
    dropped = [m for b in blocks[: len(blocks) - n_keep] for m in b]

    summary = previous_summary
    if summarizing and summarizer is not None and dropped:
        try:
            if previous_summary is not None:
                summary = summarizer.fold(previous_summary, dropped)
            else:
                summary = summarizer.fold_from_start(messages[len(head) : len(head) + len(dropped)])
        except LmgaugeError as exc:  # the summarizer failed: fall back to trimming, say so
            warnings.append(f"summarizing failed ({exc}); the dropped turns are only trimmed")
            log.warning(warnings[-1])
        warnings += summarizer.problems

    out = prompt(kept_blocks, summary)
    tokens_after = counter.count(out)
    if tokens_after > window.limit:
        window.check_messages(out)  # a single message too big: say which
        raise ContextOverflowError(
            tokens_after, window.num_ctx, what="even compacted, the system prompt and the last turn"
        )
    result = CompactionResult(
        messages=out,
        strategy=strategy,
        tokens_before=tokens_before,
        tokens_after=tokens_after,
        ms=(time.perf_counter() - t0) * 1000,
        messages_before=len(messages),
        kept=[m for b in kept_blocks for m in b],
        dropped=len(dropped),
        summary=summary if summarizing else None,
        pinned=pinned,
        reason=reason,
        warnings=warnings,
    )
    if store is not None:
        log_compaction(store, result, conversation=conversation, model=model, counter=counter)
    return result


class _CountedBy:
    """A TokenCounter over a caller's own count function (the gateway counts with its backend)."""

    exact = True

    def __init__(self, count: Callable[[list[Message]], int]):
        self._count = count

    def count(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        return self._count(messages)

    def count_text(self, text: str) -> int:
        return self._count([Message("user", text)])


def compact_to_budget(messages: list[Message], budget: int, count: Callable[[list[Message]], int]) -> list[Message]:
    """The gateway's context guard: the conversation trimmed to at most `budget` tokens by its
    own counter: system prompt + as many whole recent turns as fit (a tool call never loses its
    results; the last turn always stays). Trim only: the guard has no model to summarize with.
    Raises ContextOverflowError when the system prompt and the last turn alone do not fit."""
    window = ContextWindow(_CountedBy(count), num_ctx=max(budget, 16), reserve=0)
    return compact(messages, "trim", window, keep_turns=len(messages) + 1, target=1.0).messages


def log_compaction(
    store: Store,
    result: CompactionResult,
    conversation: str | None = None,
    model: str | None = None,
    counter: TokenCounter | None = None,
) -> None:
    """One row in context_compactions (best effort: a full disk must not fail a chat turn)."""
    try:
        store.ensure(SCHEMA)
        summary_tokens = counter.count_text(result.summary) if counter and result.summary else None
        with store.connect() as db:
            db.execute(
                "INSERT INTO context_compactions (ts, conversation, model, strategy, reason, tokens_before, "
                "tokens_after, messages_before, messages_after, dropped, ms, summary_tokens, pinned, warnings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    conversation,
                    model,
                    result.strategy,
                    result.reason,
                    result.tokens_before,
                    result.tokens_after,
                    result.messages_before,
                    result.messages_after,
                    result.dropped,
                    result.ms,
                    summary_tokens,
                    len(result.pinned),
                    json.dumps(result.warnings) if result.warnings else None,
                ),
            )
    except (sqlite3.Error, OSError) as exc:
        log.warning("could not log the compaction to %s: %s", store.path, exc)


def compactions(store: Store, conversation: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Logged compactions, newest first."""
    store.ensure(SCHEMA)
    sql = "SELECT * FROM context_compactions"
    args: list[Any] = []
    if conversation is not None:
        sql += " WHERE conversation = ?"
        args.append(conversation)
    with store.connect() as db:
        return [dict(r) for r in db.execute(sql + " ORDER BY ts DESC, id DESC LIMIT ?", [*args, limit])]
