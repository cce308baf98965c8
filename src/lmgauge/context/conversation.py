"""A chat session whose context is managed: budget, compaction, long-term memory, documents.

    conv = Conversation(client, "smollm2", memory=Memory(store, embedder), docs=index, store=store)
    turn = conv.send("I moved from Lyon to Oslo.")       # -> Turn: answer, budget, what was done
    turn.budget, turn.compaction, turn.recalled, turn.retrieved, turn.extraction

What one turn does, in order:
1. refuses a message that alone is larger than the window (nothing else can help it);
2. recalls memories and archived turns, and loads document chunks, relevant to the message
   (each packed to its token budget) and puts them in front of the message, for this turn only:
   they never pile up in the history;
3. measures the prompt; at `alert_at` (75%) the alert fires; at a compaction trigger the history
   is compacted (trim / summarize / hybrid), down to `target` (50%);
4. checks the result against the window (ContextOverflowError at 100%: never truncated);
5. archives the user's message before the model is called (a crash loses nothing), asks the
   model, archives the answer, then extracts memories from the message (after the answer, so
   the user never waits for it before seeing one).

With `background=True` (what `lmgauge chat` uses) extraction and compaction leave the critical
path entirely: after the answer they are queued on a worker thread (background.py), and the
next turn takes a finished compaction as it finds it. A turn waits for background work only
when its prompt would not fit the window without it; such waits are counted (`waits`,
`Prepared.waited_ms`). The 75% alert and the hard budget hold as before.

Between compactions the prompt only grows at its end, so the engine's prefix cache serves the
whole history and only the new message is evaluated: that is what keeps time to first token flat
(benchmarks/context_cost.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import ContextSettings
from ..errors import ContextOverflowError
from ..store import Store
from ..types import Message, Result
from .background import Background, Job
from .compaction import CompactionResult, Summarizer, compact, compose_system, should_compact
from .memory import Extraction, Extractor, Memory, MemoryItem, Recalled, is_question, recall_block
from .retrieval import DocChunk, DocIndex, docs_block
from .tokens import ServerTokens
from .window import Budget, ContextWindow, default_num_ctx

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("lmgauge.context")

DEFAULT_SYSTEM = "You are a helpful assistant."
# A chunk is loaded only if it shares a term with the message or is at least this similar.
DOCS_MIN_SIMILARITY = 0.3
# Caps on the per-turn context, as shares of the prompt budget (see Conversation._budgets).
MEMORY_SHARE = 0.15
DOCS_SHARE = 0.3
SUMMARY_SHARE = 0.15


EXTRACTION_MIN_CTX = 1024  # the extractor's window: its prompt (~480 tokens) plus up to 180 tokens of JSON
# Shown instead of a message in the history that states a value the memory has since replaced.
OUTDATED = "[a message whose facts changed later: see the memory]"


@dataclass
class Prepared:
    """A turn's prompt, built and checked, before the model is called."""

    turn: int
    text: str  # the user's message as written
    messages: list[Message]  # what will be sent
    budget: Budget  # of `messages`
    before: Budget  # of the conversation before compaction (what the alert looks at)
    compaction: CompactionResult | None = None
    recalled: list[Recalled] = field(default_factory=list)
    retrieved: list[DocChunk] = field(default_factory=list)
    alert: bool = False  # the alert fired on this turn (the conversation crossed alert_at)
    warnings: list[str] = field(default_factory=list)
    archived: bool = False  # the user's message is already in the memory archive
    memory_ms: float = 0.0  # time this turn spent on memory and compaction before the model ran
    waited_ms: float = 0.0  # ... of which waiting for background work (the prompt did not fit)

    @property
    def prompt_text(self) -> str:
        return "\n".join(m.content for m in self.messages)


@dataclass
class Turn:
    """One finished turn and everything the context manager did for it."""

    prepared: Prepared
    answer: str
    result: Result | None = None  # None when the answer was recorded, not generated
    extraction: Extraction | None = None

    @property
    def number(self) -> int:
        return self.prepared.turn

    @property
    def budget(self) -> Budget:
        return self.prepared.budget

    @property
    def compaction(self) -> CompactionResult | None:
        return self.prepared.compaction

    @property
    def recalled(self) -> list[Recalled]:
        return self.prepared.recalled

    @property
    def retrieved(self) -> list[DocChunk]:
        return self.prepared.retrieved

    @property
    def warnings(self) -> list[str]:
        return self.prepared.warnings + (self.extraction.warnings if self.extraction else [])

    def to_dict(self) -> dict[str, Any]:
        p = self.prepared
        out: dict[str, Any] = {
            "turn": p.turn,
            "answer": self.answer,
            "budget": p.budget.to_dict(),
            "alert": p.alert,
            "compaction": p.compaction.to_dict() if p.compaction else None,
            "recalled": [r.to_dict() for r in p.recalled],
            "retrieved": [
                {"path": c.path, "lines": [c.start_line, c.end_line], "title": c.title, "tokens": c.tokens}
                for c in p.retrieved
            ],
            "memories": [
                {"action": r.action, "kind": r.item.kind, "key": r.item.key, "value": r.item.value}
                for r in (self.extraction.stored if self.extraction else [])
            ],
            "warnings": self.warnings,
        }
        if self.result is not None:
            t = self.result.timings
            out["timings"] = {
                "prompt_tokens": t.prompt_tokens,
                "cached_tokens": t.cached_tokens,
                "output_tokens": t.output_tokens,
                "ttft_ms": t.ttft_ms,
                "e2e_ms": t.e2e_ms,
            }
        return out


class Conversation:
    def __init__(
        self,
        client: Client,
        model: str,
        *,
        system: str | None = None,
        num_ctx: int | None = None,
        config: ContextSettings | None = None,
        memory: Memory | None = None,
        docs: DocIndex | None = None,
        store: Store | None = None,
        conversation_id: str | None = None,
        options: dict[str, Any] | None = None,
        extract: bool = True,
        window: ContextWindow | None = None,
        on_alert: Callable[[Budget], None] | None = None,
        background: bool = False,
    ):
        self.client = client
        self.model = model
        self.cfg = config or client.settings.context
        # The answer's reserve: num_predict when the caller caps the answer, else context.reserve
        # (either at most a quarter of the window).
        if window is None:
            num_ctx = num_ctx or default_num_ctx(client, model)
            predict = (options or {}).get("num_predict")
            reserve = predict if isinstance(predict, int) and predict > 0 else self.cfg.reserve
            window = ContextWindow.for_model(
                client, model, num_ctx, reserve=min(reserve, num_ctx // 4), alert_at=self.cfg.alert_at
            )
        self.window = window
        self.counter = self.window.counter
        self.memory = memory
        self.docs = docs
        self.store = store
        self.id = conversation_id or uuid.uuid4().hex[:12]
        # Every call this conversation makes runs with the same window, so the embedded engine
        # keeps one model instance (a new num_ctx would reload it) and its prefix cache.
        self.options = {**(options or {}), "num_ctx": self.window.num_ctx}
        self.on_alert = on_alert
        helper = self.cfg.summary_model or model
        summary_tokens = max(16, min(self.cfg.summary_tokens, int(self.window.limit * SUMMARY_SHARE)))
        self.summarizer = (
            Summarizer(client, helper, self.counter, self.window.num_ctx, summary_tokens, store)
            if self.cfg.strategy in ("summarize", "hybrid")
            else None
        )
        # The extraction prompt lists every allowed slot key (~480 tokens with the built-in
        # vocabulary): in a small chat window it would leave no room for the answer's JSON.
        extract_ctx = max(self.window.num_ctx, EXTRACTION_MIN_CTX)
        self.extractor = Extractor(client, helper, memory, {"num_ctx": extract_ctx}) if memory and extract else None

        base = system if system is not None else (DEFAULT_SYSTEM if (memory or docs) else "")
        if docs is not None and self.cfg.docs_summary_tokens > 0:
            listing = min(self.cfg.docs_summary_tokens, int(self.window.limit * SUMMARY_SHARE))
            base = (base + "\n\n" if base else "") + docs.summary(self.counter, listing)
        self.base_system = base
        self.history: list[Message] = []
        self._history_turns: list[int] = []  # the turn each history message belongs to
        self.summary: str | None = None
        self.pinned: list[MemoryItem] = []
        self.turn = 0
        self._alerting = False
        self.compactions: list[CompactionResult] = []
        # Background work (see the module docstring): the queue, the compaction in flight (and
        # the history length it was computed from), and the turns that had to wait for it.
        self.background = Background() if background else None
        self._compacting: tuple[Job, int] | None = None
        self.waits = 0

    # --- the prompt ------------------------------------------------------------------------------
    def system_message(self) -> list[Message]:
        text = compose_system(self.base_system, self._summary(), self.pinned)
        return [Message("system", text)] if text else []

    def _summary(self) -> str | None:
        """The summary without the sentences that state a value since replaced or retracted
        (Memory.without_outdated): the prompt never states a stale value as known."""
        if self.summary and self.memory is not None:
            return self.memory.without_outdated(self.summary) or None
        return self.summary

    def _shown_history(self) -> list[Message]:
        """The history as the prompt shows it (see _hide_outdated)."""
        return self._hide_outdated(self.history, self._history_turns)

    def _hide_outdated(self, history: list[Message], turns: list[int]) -> list[Message]:
        """`history` with each user message that states a value the memory has since replaced
        or retracted (Memory.outdated_turns) shown as OUTDATED instead. With "By the way, I live
        in Oslo." in the window, the 0.5B answered "Which city do I live in now?" with "I live in
        Oslo." beside the recalled "home city: Quito (changed from Oslo on turn 14)" (test seed
        0); marked "[outdated, changed later] Home for me is Bergen.", it still answered "Home
        for me is Bergen." (tuning seeds, oracle memories: 2 stale answers of 111, none without
        the old words). The history keeps what was said, and the message count stays, so a
        compaction's snapshot maps onto the history. A change of what is shown changes how the
        prompt starts, once per change: see _prefill."""
        if self.memory is None or not history:
            return history
        pairs = list(zip(history, turns, strict=True))
        outdated = self.memory.outdated_turns(self.id, [(t, m.content) for m, t in pairs if m.role == "user"])
        if not outdated:
            return history
        return [dataclasses.replace(m, content=OUTDATED) if m.role == "user" and t in outdated else m for m, t in pairs]

    def _shown(self) -> list[Message]:
        """System message and history, as this turn's prompt starts."""
        return self.system_message() + self._shown_history()

    def _budgets(self) -> tuple[int, int]:
        """Tokens for recalled memory and for document excerpts per turn: the configured values,
        each capped at a share of the prompt budget so that a small window still works (the
        summary's length is capped the same way)."""
        limit = self.window.limit
        return min(self.cfg.memory_tokens, int(limit * MEMORY_SHARE)), min(
            self.cfg.docs_tokens, int(limit * DOCS_SHARE)
        )

    def _context_for(self, text: str, turn: int, room: int) -> tuple[list[Recalled], list[DocChunk]]:
        """Memories and document chunks for this message, packed into at most `room` tokens."""
        memory_budget, docs_budget = self._budgets()
        recalled: list[Recalled] = []
        if self.memory is not None and min(memory_budget, room) > 0:
            recalled = self.memory.recall(
                text,
                self.counter,
                min(memory_budget, room),
                conversation=self.id,
                exclude_turns=set(self._history_turns) | {turn},
                exclude_memories={m.id for m in self.pinned},
            )
            room -= self.counter.count_text(recall_block(recalled) + "\n\n") if recalled else 0
        retrieved: list[DocChunk] = []
        if self.docs is not None and min(docs_budget, room) > 0:
            retrieved = self.docs.retrieve(text, min(docs_budget, room), min_similarity=DOCS_MIN_SIMILARITY).chunks
        return recalled, retrieved

    @staticmethod
    def _with_context(text: str, recalled: list[Recalled], retrieved: list[DocChunk]) -> str:
        blocks = [b for b in (recall_block(recalled), docs_block(retrieved)) if b]
        if not blocks:
            return text
        return "\n\n".join(blocks) + "\n\n---\n" + text

    def _build(self, text: str, turn: int) -> tuple[list[Message], list[Recalled], list[DocChunk]]:
        """The prompt: system, history, and the message with the context that fits beside them."""
        plain = self._shown() + [Message("user", text)]
        room = self.window.limit - self.window.measure(plain).used
        recalled, retrieved = self._context_for(text, turn, room) if room > 0 else ([], [])
        messages = plain[:-1] + [Message("user", self._with_context(text, recalled, retrieved))]
        if (recalled or retrieved) and self.window.measure(messages).over:
            # The blocks were counted apart; joined they can tokenize a little longer. Never
            # send an over-full prompt for their sake: drop them for this turn.
            return plain, [], []
        return messages, recalled, retrieved

    def prepare(self, text: str) -> Prepared:
        """Build and check this turn's prompt, compacting the history if a trigger is reached.
        Raises ContextOverflowError (the message and the history are unchanged) if it cannot fit."""
        turn = self.turn + 1
        t0 = time.perf_counter()
        applied = self._take_compaction(wait=False)
        if self.pinned and self.memory is not None:
            # A pinned memory that was replaced since the compaction leaves the system prompt
            # (its new value is recalled instead): the prompt never states a stale value as known.
            current = {m.id for m in self.memory.current()}
            self.pinned = [m for m in self.pinned if m.id in current]
        alone = self.counter.count([Message("user", text)])
        if alone > self.window.limit:
            raise ContextOverflowError(
                alone,
                self.window.num_ctx,
                what=f"this message alone (with {self.window.reserve} tokens reserved for the answer)",
            )
        messages, recalled, retrieved = self._build(text, turn)
        # What the alert and the triggers look at: the prompt this turn would send, i.e. the
        # whole conversation as it stands plus as much of this turn's context as fits (a
        # conversation near the window gets less of its budget; see _build).
        before = self.window.measure(messages)
        prepared = Prepared(turn, text, messages, before, before, recalled=recalled, retrieved=retrieved)
        prepared.compaction = applied
        if self._compacting is not None and before.over:
            # The background compaction has not finished and this prompt does not fit: wait.
            waited = time.perf_counter()
            prepared.compaction = self._take_compaction(wait=True) or prepared.compaction
            prepared.waited_ms = (time.perf_counter() - waited) * 1000
            messages, prepared.recalled, prepared.retrieved = self._build(text, turn)
            before = self.window.measure(messages)
            prepared.before = before
        if before.alert and not self._alerting:
            prepared.alert = True
            log.warning("context alert: %s", before)
            if self.on_alert is not None:
                self.on_alert(before)
        self._alerting = before.alert

        reason = should_compact(before, len(messages), self.cfg)
        if (
            reason
            and self.background is not None
            and (self._compacting is not None or not self.window.measure(messages).over)
        ):
            reason = None  # it fits: compact after the answer, in the background (see commit)
        if reason:
            waited = time.perf_counter()  # with background work: nothing in flight helps, a wait
            plain = self._shown() + [Message("user", text)]
            result = compact(
                plain,
                self.cfg.strategy,
                self.window,  # type: ignore[arg-type]
                summarizer=self.summarizer,
                memory=self.memory if self.cfg.strategy == "hybrid" else None,
                previous_summary=self._summary(),
                keep_turns=self.cfg.keep_turns,
                target=self.cfg.target,
                memory_tokens=self._budgets()[0],
                reason=reason,
                store=self.store,
                conversation=self.id,
                model=self.model,
            )
            kept = len(result.kept) - 1  # the last kept message is the current one
            self.history = self.history[len(self.history) - kept :] if kept > 0 else []
            self._history_turns = self._history_turns[len(self._history_turns) - kept :] if kept > 0 else []
            self.summary, self.pinned = result.summary, result.pinned
            self.compactions.append(result)
            prepared.compaction = result
            prepared.warnings += result.warnings
            # Turns that just left the prompt are now what recall searches.
            messages, prepared.recalled, prepared.retrieved = self._build(text, turn)
            if self.background is not None:
                prepared.waited_ms += (time.perf_counter() - waited) * 1000
        self.waits += prepared.waited_ms > 0  # turns that waited for memory work
        prepared.messages = messages
        if self.background is not None:
            prepared.warnings += self.background.take_warnings()
        prepared.memory_ms = (time.perf_counter() - t0) * 1000
        prepared.budget = self.window.check(messages)  # ContextOverflowError at 100%
        return prepared

    # --- a turn ----------------------------------------------------------------------------------
    def send(self, text: str, on_text: Callable[[str], None] | None = None, **chat_kwargs: Any) -> Turn:
        """Prepare, ask the model (streaming each piece of text to `on_text`), record."""
        prepared = self.prepare(text)
        self._archive(prepared.turn, "user", text)  # before the model runs: a crash loses nothing
        prepared.archived = True
        result = None
        for chunk in self.client.chat_stream(self.model, prepared.messages, options=self.options, **chat_kwargs):
            if chunk.content and on_text is not None:
                on_text(chunk.content)
            if chunk.done:
                result = chunk.result
        assert result is not None
        if isinstance(self.counter, ServerTokens):  # the server's own count, for the next turn
            self.counter.observe(prepared.messages, result.timings.prompt_tokens)
        return self.commit(prepared, result.content, result)

    def commit(self, prepared: Prepared, answer: str, result: Result | None = None, extract: bool = True) -> Turn:
        """Record a prepared turn's answer (generated, or given: evaluations replay conversations)."""
        if not prepared.archived:
            self._archive(prepared.turn, "user", prepared.text)
        self.history += [Message("user", prepared.text), Message("assistant", answer)]
        self._history_turns += [prepared.turn, prepared.turn]
        self.turn = prepared.turn
        self._archive(prepared.turn, "assistant", answer)
        extraction = None
        turn = Turn(prepared, answer, result, extraction)
        # A message that is one question and nothing else states no memory (recall skips those
        # too); not asking the model about it halves the extraction calls of a typical chat.
        if self.extractor is not None and extract and not is_question(prepared.text):
            if self.background is None:
                turn.extraction = self.extractor.extract(prepared.text, conversation=self.id, turn=prepared.turn)
            else:  # after the answer, off the critical path: the Turn gets it when done
                extractor = self.extractor

                def run() -> None:
                    turn.extraction = extractor.extract(prepared.text, conversation=self.id, turn=prepared.turn)

                self.background.submit("extraction", prepared.turn, run)
        if self.background is not None:
            self._schedule_compaction(prepared.turn)
            if self.memory is not None:
                # The history as it is now: the next turn may change it while the job waits.
                sent, history, turns = prepared.messages[:-1], list(self.history), list(self._history_turns)
                self.background.submit("prefill", prepared.turn, lambda: self._prefill(sent, history, turns))
        return turn

    def _prefill(self, sent: list[Message], history: list[Message], turns: list[int]) -> None:
        """After this turn's extraction: if the next prompt will not start as this one did (a
        statement newly hidden as OUTDATED, a summary sentence or a pinned memory dropped), have the
        engine evaluate its new start now, so that the user's next turn finds it in the prefix
        cache instead of waiting for the whole history to be evaluated again (seconds on a CPU)."""
        if self._compacting is not None:
            return  # the next turn applies the compaction: its prompt starts anew anyway
        start = self.system_message() + self._hide_outdated(history, turns)
        if start[: len(sent)] != sent:
            self.client.chat(self.model, start, options={**self.options, "num_predict": 1})

    # --- background compaction -------------------------------------------------------------------
    def _schedule_compaction(self, turn: int) -> None:
        """After a turn: if the conversation has reached a compaction trigger, compact a snapshot
        of it in the background (queued after this turn's extraction, so hybrid pins its facts)."""
        if self.background is None or self._compacting is not None or self.cfg.strategy == "none":
            return
        snapshot = self._shown()
        # The next prompt will also hold a message and this turn's recalled context: count that
        # room now, so the compaction is ready before the prompt stops fitting.
        memory_budget, docs_budget = self._budgets()
        room = (memory_budget if self.memory else 0) + (docs_budget if self.docs else 0)
        measured = self.window.measure(snapshot)
        reason = should_compact(dataclasses.replace(measured, used=measured.used + room), len(snapshot) + 1, self.cfg)
        if not reason:
            return
        summary, n_history = self._summary(), len(self.history)
        kwargs = dict(
            summarizer=self.summarizer,
            memory=self.memory if self.cfg.strategy == "hybrid" else None,
            previous_summary=summary,
            keep_turns=self.cfg.keep_turns,
            target=self.cfg.target,
            memory_tokens=self._budgets()[0],
            reason=reason + " (after the answer)",
            store=self.store,
            conversation=self.id,
            model=self.model,
        )
        strategy = self.cfg.strategy
        job = self.background.submit("compaction", turn, lambda: compact(snapshot, strategy, self.window, **kwargs))  # type: ignore[arg-type]
        self._compacting = (job, n_history)

    def _take_compaction(self, wait: bool) -> CompactionResult | None:
        """Apply the background compaction if it has finished (or, with `wait`, once it has)."""
        if self._compacting is None:
            return None
        job, n_history = self._compacting
        if not wait and not job.future.done():
            return None
        result: CompactionResult | None = job.future.result()
        self._compacting = None
        if result is None:  # it failed: the warning is in the queue; the next trigger retries
            return None
        kept = len(result.kept)  # the snapshot's last turns kept verbatim
        start = max(0, n_history - kept)
        self.history = self.history[start:]
        self._history_turns = self._history_turns[start:]
        self.summary, self.pinned = result.summary, result.pinned
        self.compactions.append(result)
        return result

    def settle(self) -> float:
        """Wait for the background work (extraction, compaction); the milliseconds waited. A
        finished compaction is applied at the next turn."""
        return self.background.settle() if self.background is not None else 0.0

    def close(self) -> None:
        """Finish the background work (so no memory is lost) and stop its thread."""
        if self.background is not None:
            self.background.close()

    def record(self, text: str, answer: str, extract: bool = True) -> Turn:
        """A turn whose answer is known (no model call for the answer)."""
        return self.commit(self.prepare(text), answer, extract=extract)

    def _archive(self, turn: int, role: str, content: str) -> None:
        if self.memory is not None:
            self.memory.archive_turn(self.id, turn, role, content)
