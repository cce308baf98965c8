"""The embedded engine's decode loop: continuous batching over llama.cpp's low-level API.

One thread owns a llama context and runs steps. Each step builds one `llama_batch` holding
  - one token for every running sequence (its last sampled token), then
  - chunks of newcomers' prompts, filling the rest of the batch (chunked prefill, so running
    streams keep flowing while a long prompt is evaluated),
calls `llama_decode` once, and samples the next token of every sequence whose logits were
requested, each with its own sampler chain (options, grammar), stop strings and output queue.

Requests join between steps and leave when they finish or are cancelled. Each slot (a KV
sequence id) remembers which tokens its KV cells hold, so a request whose prompt starts with
tokens already in the cache (a shared system prompt, the previous turn of a conversation)
reuses them instead of recomputing: in place when the slot is idle, or by copying another
sequence's cells (`llama_memory_seq_cp`; each sequence has its own KV stream, so that a greedy
answer does not depend on which other requests ran beside it). Reused tokens are reported as cached, never as work.

A job that speculates (engines/speculative.py) puts its drafted tokens right after its last
token, with logits for each; after the decode its rows are sampled in order while the drafts
match, and the cells of rejected drafts are removed from its sequence.

With one slot this is exactly a plain single-stream decode loop; timings are taken here, on the
engine's side, and sent with the final event.
"""

from __future__ import annotations

import codecs
import ctypes
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as L

from ..errors import EngineError
from ..types import DoneReason
from . import compute, speculative
from .sampling import Sampler, StopMatcher
from .speculative import SpecState

# Below this many shared tokens, copying another sequence's cells is not worth a KV copy.
MIN_SHARED_PREFIX = 16


@dataclass
class EngineStats:
    """The engine-side clock for one request (ns, perf_counter_ns) and its token counts."""

    prompt_tokens: int
    cached_tokens: int = 0
    output_tokens: int = 0
    t_submit: int = 0
    t_start: int = 0  # admitted to a slot: prompt evaluation starts
    t_first_sample: int = 0  # first token sampled: prompt evaluation ends
    t_first_out: int = 0  # first output token (differs from t_first_sample if it was EOG)
    t_last_out: int = 0
    t_end: int = 0

    @property
    def prompt_eval_ns(self) -> int:
        return max(self.t_first_sample - self.t_start, 0)

    @property
    def eval_ns(self) -> int:
        return max(self.t_last_out - self.t_first_out, 0) if self.output_tokens else 0

    @property
    def queue_ns(self) -> int:
        return max(self.t_start - self.t_submit, 0)


@dataclass(frozen=True, slots=True)
class TextEvent:
    """A piece of output text (stop strings already held back or cut)."""

    text: str


@dataclass(frozen=True, slots=True)
class DoneEvent:
    """The job ended: why ("stop" | "length" | "cancel") and its engine-side clock and counts."""

    reason: DoneReason
    stats: EngineStats


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The job failed (a llama.cpp decode error): the caller's thread raises it."""

    error: Exception


JobEvent = TextEvent | DoneEvent | ErrorEvent


@dataclass(eq=False)
class Job:
    """One request inside the scheduler. Events go to `events` (read by the caller's thread):
    a TextEvent per piece of output, then a DoneEvent or an ErrorEvent."""

    tokens: list[int]
    sampler: Sampler
    max_tokens: int  # output tokens allowed (already capped by the window)
    stops: StopMatcher
    reuse_cache: bool = True
    spec: SpecState | None = None  # speculative decoding, when the request asked for it
    events: queue.SimpleQueue[JobEvent] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    # scheduler state
    slot: Slot | None = None
    pending: list[int] = field(default_factory=list)
    n_past: int = 0
    last: int = -1
    out_index: int = -1
    stats: EngineStats = field(init=False)  # set anew by Scheduler.submit (its clock starts there)
    _utf8: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    output_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stats = EngineStats(prompt_tokens=len(self.tokens))

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def held(self) -> Slot:
        """The slot of a running job: set when the scheduler admits it, cleared when it finishes."""
        assert self.slot is not None, "the job is not running"
        return self.slot


@dataclass(eq=False)
class Slot:
    seq: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV cells this seq holds
    job: Job | None = None
    last_used: int = 0  # perf_counter_ns when it last took a job (unrelated jobs take the oldest)


class Scheduler:
    def __init__(self, ctx: Any, vocab: Any, n_slots: int, n_ctx_seq: int, n_batch: int, n_outputs: int = 0):
        self.ctx = ctx
        self.vocab = vocab
        self.mem = L.llama_get_memory(ctx)
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = max(n_batch, n_slots)
        self.n_outputs = max(n_outputs, n_slots)  # rows of logits one decode may ask for (llama.cpp's n_outputs_max)
        self.slots = [Slot(seq=i) for i in range(n_slots)]
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._waiting: deque[Job] = deque()
        self._cond = compute.lock  # shared by every model: one thread decodes for all (compute.py)
        self._stopping = False
        self._stopped = threading.Event()
        compute.register(self)

    # --- caller side ---------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        job.stats = EngineStats(prompt_tokens=len(job.tokens), t_submit=time.perf_counter_ns())
        with self._cond:
            if self._stopping:
                raise EngineError("the model is being unloaded; retry the request")
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    @property
    def active(self) -> int:
        """Requests running or waiting."""
        return len(self._waiting) + sum(1 for s in self.slots if s.job is not None)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if compute.on_compute_thread():
            self.run_once()
        self._stopped.wait()
        L.llama_batch_free(self._batch)

    # --- the loop ------------------------------------------------------------------------------
    def wants_to_run(self) -> bool:
        """compute.Worker: called with the shared lock held."""
        return not self._stopped.is_set() and (self._stopping or bool(self._waiting) or bool(self._running()))

    def run_once(self) -> None:
        """compute.Worker: one turn on the compute thread (admit, drop cancelled, one decode step)."""
        with self._cond:
            if self._stopping:
                jobs = list(self._waiting) + [s.job for s in self.slots if s.job]
                self._waiting.clear()
            else:
                jobs = None
                self._admit()
        if jobs is not None:
            for job in jobs:
                self._finish(job, error=EngineError("the model was unloaded while serving this request"))
            compute.unregister(self)
            self._stopped.set()
            return
        self._drop_cancelled()
        if self._running():
            self._step()

    def _running(self) -> list[Job]:
        return [s.job for s in self.slots if s.job is not None]

    def _admit(self) -> None:
        """Move waiting jobs into free slots, reusing the longest cached prefix available.

        A job whose prompt shares a long prefix with a prompt still being evaluated waits for
        those tokens to reach the cache and then copies them, instead of computing them again
        (8 requests with one long system prompt arriving together: one prefill, not eight).
        """
        for job in list(self._waiting):
            idle = [s for s in self.slots if s.job is None]
            if not idle:
                return
            if job.cancelled:
                self._waiting.remove(job)
                self._finish(job, reason="cancel")
                continue
            if job.reuse_cache and self._prefix_in_flight(job):
                continue
            self._waiting.remove(job)
            slot, reuse, source = self._pick_slot(job, idle)
            if source is not None:  # copy the shared prefix from another sequence's stream
                # Each sequence has its own KV stream (llamacpp.py), and llama.cpp copies between
                # streams only whole: copy all of the donor's cells, then cut after the prefix.
                L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
                L.llama_memory_seq_cp(self.mem, source.seq, slot.seq, -1, -1)
                L.llama_memory_seq_rm(self.mem, slot.seq, reuse, -1)
                slot.cache = source.cache[:reuse]
            elif not L.llama_memory_seq_rm(self.mem, slot.seq, reuse, -1):
                L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)  # cannot cut: start over
                reuse = 0
            del slot.cache[reuse:]
            slot.job, job.slot = job, slot
            slot.last_used = time.perf_counter_ns()
            job.pending = job.tokens[reuse:]
            job.n_past = reuse
            job.stats.cached_tokens = reuse
            job.stats.t_start = time.perf_counter_ns()

    def _prefix_in_flight(self, job: Job) -> bool:
        """Is a worthwhile part of this prompt being evaluated right now by another job?"""
        limit = len(job.tokens) - 1
        cached = max((_common_prefix(s.cache, job.tokens) for s in self.slots), default=0)
        coming = max(
            (min(_common_prefix(j.tokens, job.tokens), limit) for j in self._running() if j.pending), default=0
        )
        return coming - cached >= MIN_SHARED_PREFIX

    def _pick_slot(self, job: Job, idle: list[Slot]) -> tuple[Slot, int, Slot | None]:
        """The idle slot to use, how many prompt tokens are already cached, and where from."""
        limit = len(job.tokens) - 1  # always evaluate at least one token, to get logits
        if not job.reuse_cache:
            return min(idle, key=lambda s: len(s.cache)), 0, None
        best_idle = max(idle, key=lambda s: _common_prefix(s.cache, job.tokens))
        reuse = min(_common_prefix(best_idle.cache, job.tokens), limit)
        others = [s for s in self.slots if s is not best_idle]
        donor = max(others, key=lambda s: _common_prefix(s.cache, job.tokens), default=None)
        if donor is not None:
            shared = min(_common_prefix(donor.cache, job.tokens), limit)
            if shared >= MIN_SHARED_PREFIX and shared > reuse:
                # Take an idle slot whose own cache is least useful and copy the donor's prefix.
                target = min((s for s in idle if s is not donor), key=lambda s: len(s.cache))
                return target, shared, donor
        if reuse < MIN_SHARED_PREFIX:
            # Nothing worth reusing (a few template tokens at most): take the least recently used
            # slot, so an unrelated request (a memory extraction between two chat turns) does not
            # evict the cache of the conversation that will come back.
            lru = min(idle, key=lambda s: s.last_used)
            return lru, min(_common_prefix(lru.cache, job.tokens), limit), None
        return best_idle, reuse, None

    def _drop_cancelled(self) -> None:
        for job in self._running():
            if job.cancelled:
                # Free the cancelled sequence's cells: its cache is not worth the space.
                L.llama_memory_seq_rm(self.mem, job.held.seq, -1, -1)
                job.held.cache.clear()
                self._finish(job, reason="cancel")

    def _step(self) -> None:
        batch, n = self._batch, 0
        decoding = [j for j in self._running() if not j.pending]
        prefilling = [j for j in self._running() if j.pending]
        chunks: list[tuple[Job, list[int]]] = []
        speculating = [j for j in decoding if j.spec is not None]
        if speculating:
            # Rows left for drafts: one per decoding job and one for a prompt that completes
            # are spoken for; a prompt chunk still gets at least a few tokens of the batch.
            rows = [self.n_outputs - len(decoding) - (1 if prefilling else 0)]
            tokens = [self.n_batch - len(decoding) - (16 if prefilling else 0)]

            def budget(job: Job, k: int) -> int:
                room = min(
                    k, rows[0], tokens[0], self.n_ctx_seq - job.n_past - 2, job.max_tokens - job.stats.output_tokens - 1
                )
                room = max(room, 0)
                rows[0] -= room
                tokens[0] -= room
                return room

            speculative.propose(speculating, budget)
        for job in decoding:
            self._put(n, job.last, job.n_past, job.held.seq, True)
            job.out_index = n
            n += 1
            for i, tok in enumerate(job.spec.drafts if job.spec else ()):
                self._put(n + i, tok, job.n_past + 1 + i, job.held.seq, True)
            n += len(job.spec.drafts) if job.spec else 0
        for job in prefilling:
            # One newcomer's prompt per step: llama.cpp's results depend slightly on how a batch
            # is composed, and prompts prefilled together made greedy answers part from the ones
            # given alone (SmolLM2, 8 long answers: 1 of 8 identical; one prompt per step: 7 of 8).
            # Prefill throughput barely changes (a whole prompt per step, up to n_batch tokens).
            take = min(len(job.pending), self.n_batch - n) if not chunks else 0
            if take <= 0:
                job.out_index = -1
                continue
            chunk = job.pending[:take]
            completes = take == len(job.pending)
            for i, tok in enumerate(chunk):
                self._put(n + i, tok, job.n_past + i, job.held.seq, completes and i == take - 1)
            job.out_index = n + take - 1 if completes else -1
            chunks.append((job, chunk))
            n += take
        batch.n_tokens = n
        t0 = time.perf_counter_ns()
        rc = compute.call(L.llama_decode, self.ctx, batch)  # one OpenMP team per process: see compute.py
        decode_ns = time.perf_counter_ns() - t0
        if rc != 0:
            for job in decoding + [j for j, _ in chunks]:
                L.llama_memory_seq_rm(self.mem, job.held.seq, -1, -1)
                job.held.cache.clear()
                self._finish(job, error=EngineError(f"llama_decode failed (code {rc})"))
            return
        for job in decoding:
            job.held.cache.append(job.last)
            job.n_past += 1
        for job, chunk in chunks:
            job.held.cache.extend(chunk)
            job.n_past += len(chunk)
            job.pending = job.pending[len(chunk) :]
        for job in decoding:
            if job.spec is not None:
                self._verify(job, decode_ns)
            else:
                self._sample(job)
        for job, _ in chunks:
            if job.out_index >= 0:
                self._sample(job)

    def _verify(self, job: Job, decode_ns: int) -> None:
        """Sample a speculating job's rows while its drafts match, keep the accepted drafts'
        cells and remove the rest (the target's and, lazily, the draft model's)."""
        spec = job.spec
        assert spec is not None, "only a speculating job is verified"
        slot, drafts, base = job.held, spec.drafts, job.n_past

        def row(i: int) -> int | None:
            job.n_past = base + i  # row i follows the last token and i drafts (the window check)
            return self._sample(job, job.out_index + i)

        spec.verifying = True
        try:
            accepted, _ = speculative.verify(drafts, row)
        finally:
            spec.verifying = False
        slot.cache.extend(drafts[:accepted])
        job.n_past = base + accepted
        if accepted < len(drafts):
            L.llama_memory_seq_rm(self.mem, slot.seq, len(slot.cache), -1)
        speculative.record(job, len(drafts), accepted, decode_ns)
        if spec.done is not None:  # the job ended in this step: its stats are complete now
            job.events.put(DoneEvent(spec.done, job.stats))

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _sample(self, job: Job, index: int = -1) -> int | None:
        """Sample the job's next token from batch row `index` (default: its out_index) and emit
        it; returns the token, or None when the job finished."""
        tok = job.sampler.sample(self.ctx, job.out_index if index < 0 else index)
        now = time.perf_counter_ns()
        stats = job.stats
        if not stats.t_first_sample:
            stats.t_first_sample = now
        if L.llama_vocab_is_eog(self.vocab, tok):
            self._finish(job, reason="stop")
            return None
        stats.output_tokens += 1
        job.output_ids.append(tok)
        if not stats.t_first_out:
            stats.t_first_out = now
        stats.t_last_out = now
        n = L.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        text, stopped = job.stops.feed(job._utf8.decode(self._piece.raw[: max(n, 0)]))
        if text:
            job.events.put(TextEvent(text))
        if stopped:
            self._finish(job, reason="stop")
        elif stats.output_tokens >= job.max_tokens or job.n_past + 1 >= self.n_ctx_seq:
            self._finish(job, reason="length")
        else:
            job.last = tok
            return tok
        return None

    def _finish(self, job: Job, reason: DoneReason = "error", error: Exception | None = None) -> None:
        if job.slot is not None:
            job.slot.job = None
            job.slot = None
        job.stats.t_end = time.perf_counter_ns()
        job.sampler.close()
        if error is not None:
            job.events.put(ErrorEvent(error))
            return
        if reason != "cancel":  # text held back as a possible stop-string start is real output
            tail = job.stops.flush() + job._utf8.decode(b"", final=True)
            if tail:
                job.events.put(TextEvent(tail))
        if job.spec is not None and job.spec.verifying:
            job.spec.done = reason  # sent by _verify once this step is counted in the stats
            return
        job.events.put(DoneEvent(reason, job.stats))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
