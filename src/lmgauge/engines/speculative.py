"""Speculative decoding for the embedded engine: guess several tokens cheaply, check them with one
target decode, keep the ones the target agrees with.

Why it pays here: on a CPU, decoding one token reads every weight once; it is bound by memory
bandwidth, not arithmetic. A batch of k+1 tokens of the same sequence reads the weights once
too, so verifying k drafted tokens costs about what one plain step costs, and every accepted
draft is a step saved. Two sources of drafts:

  - prompt lookup (`NgramLookup`): the last few tokens are looked up earlier in the prompt and the
    answer so far, and what followed them there is the draft. No second model; it pays where
    the answer repeats its input (rewriting, extraction, editing code), and costs nothing where
    nothing matches (no draft, a plain step).
  - a draft model (`Drafter`): a smaller model with the same vocabulary drafts greedily. Its KV
    cache follows the target's: one sequence per target slot holding the same tokens; after
    verification the cells of rejected drafts are removed (`llama_memory_seq_rm`) in both.

Verification (`verify`) samples the target at each drafted position with the request's own
sampler (its options, penalties and grammar) and accepts drafts while they equal what the
target sampled. A draft here is a single proposed token (the draft distribution q is a point
mass), for which this is exactly the standard rejection rule of speculative sampling (accept d
with probability min(1, p(d)/q(d)) = p(d), else sample from the residual norm(max(p - q, 0)),
which is p without d): the output follows the target's distribution, and greedy output is the
target's own. The sampler only ever sees tokens that become output, so no sampler state needs
rolling back.

With a draft model, prompt lookup is tried first at every step (with a longer match required,
`HYBRID_NGRAM_MIN`): where the answer is copying its prompt (a rewrite, an extraction) the copy
is a free draft at least as good as the small model's, and the draft model's decodes, each
costing about 40% of a target step (Qwen2.5-Coder 0.5B for 1.5B), are skipped. The draft
model's sequence simply catches up on the tokens it missed at its next step (one batched decode).

Speculation is paused where it does not pay (`Payoff`): a verification batch of k tokens costs
about one plain step only while decoding is bound by memory bandwidth. On a machine whose cores
are shared (other processes, or a single llama.cpp thread) it is bound by compute, and a batch
of 9 tokens was measured at 5x a plain step (benchmarks/verify_cost.py): then every draft costs
more than it saves. Each request compares its recent speculative steps (tokens per second,
drafting included) with its recent plain steps and, when speculating is slower, decodes plainly
for a while before trying again.

The draft length adapts per request (`DraftLength`): +2 after a fully accepted draft, -1 after
a rejection (the schedule of Hugging Face's assisted generation), and a draft model stops
drafting as soon as its own top probability falls below `P_MIN` (llama.cpp's rule).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import EngineError, InvalidOptionError, ModelFileError
from ..models import GGUFInfo
from ..sizing import MemoryEstimate
from ..types import DoneReason, SpecStats, Speculation
from . import compute

if TYPE_CHECKING:  # the scheduler imports this module; only its Job type is needed here
    from .scheduler import Job

log = logging.getLogger("lmgauge.engine")

# A draft model stops drafting when its most likely token is less likely than this (llama.cpp's
# speculative p_min; a low-confidence draft is mostly a rejected one, and costs a draft step).
P_MIN = 0.75
# Prompt lookup: the longest and shortest suffix looked up (longer matches are tried first).
NGRAM_MAX = 3
NGRAM_MIN = 2
# Beside a draft model, only a match this long is trusted over the model's draft (a 2-token match
# is often chance in free text; the draft model is right more often there).
HYBRID_NGRAM_MIN = 3
# Draft length a request starts with.
START_LENGTH = 4
# Vocabularies may differ by a few padding/added tokens at the end (llama.cpp allows 128), and
# the first ids (control tokens) are not compared (llama.cpp starts at 5).
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START = 5


# --- the acceptance rule --------------------------------------------------------------------------


def verify(drafts: list[int], sample_row: Callable[[int], int | None]) -> tuple[int, int | None]:
    """Walk the verification rows: sample_row(i) samples (and emits) the target's token after
    the first i drafts, returning None when that ended the request (end of generation, a stop
    string, the length limit). Drafts are accepted while they equal what was sampled.

    Returns (drafts accepted, the last token sampled or None if the request ended). Row i's
    logits are conditioned on drafts[:i], which are exactly the tokens emitted before it, so
    the tokens emitted are the ones plain decoding would sample.
    """
    for i, draft in enumerate(drafts):
        token = sample_row(i)
        if token is None or token != draft:
            return i, token
    return len(drafts), sample_row(len(drafts))


class DraftLength:
    """How many tokens to draft next: grows after a fully accepted draft, shrinks after a rejection."""

    def __init__(self, maximum: int, start: int = START_LENGTH):
        self.maximum = max(maximum, 1)
        self.value = min(start, self.maximum)

    def update(self, drafted: int, accepted: int) -> None:
        if not drafted:
            return
        if accepted == drafted:
            self.value = min(self.value + 2, self.maximum)
        else:
            self.value = max(self.value - 1, 1)


class Payoff:
    """Whether speculating pays for this request now: moving averages of the output rate of its
    speculative steps (accepted + 1 tokens per draft + verify time) and of its plain steps (one
    token per step). When speculation is clearly slower it pauses for `PAUSE_STEPS` plain steps
    (which also refresh the plain rate), then speculates again: conditions change (the answer
    starts copying its prompt, another process leaves the cores)."""

    PAUSE_STEPS = 16
    MIN_SPEC_STEPS = 3  # judge only after this many speculative steps since the last pause
    MARGIN = 0.95  # pause when speculating is below this share of the plain rate
    ALPHA = 0.3  # weight of the newest step in the moving averages

    def __init__(self) -> None:
        self.plain_rate: float | None = None  # tokens per ns
        self.spec_rate: float | None = None
        self.spec_steps = 0  # since the last pause
        self.paused = 0  # plain steps still to take
        self.pauses = 0

    def should_draft(self) -> bool:
        if self.paused > 0:
            self.paused -= 1
            return False
        return True

    def plain(self, ns: int) -> None:
        self.plain_rate = self._avg(self.plain_rate, 1 / max(ns, 1))

    def speculative(self, tokens: int, ns: int) -> None:
        self.spec_rate = self._avg(self.spec_rate, tokens / max(ns, 1))
        self.spec_steps += 1
        if (
            self.spec_steps >= self.MIN_SPEC_STEPS
            and self.plain_rate is not None
            and self.spec_rate < self.MARGIN * self.plain_rate
        ):
            self.paused = self.PAUSE_STEPS
            self.pauses += 1
            self.spec_steps = 0
            self.spec_rate = None  # the next try is judged on its own steps

    def _avg(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.ALPHA) * old + self.ALPHA * new


# --- prompt lookup --------------------------------------------------------------------------------


class NgramLookup:
    """Drafts by finding the sequence's last n tokens earlier in it (prompt + output so far) and
    proposing what followed the most recent earlier occurrence. Tries n = NGRAM_MAX..NGRAM_MIN.

    The index maps each n-gram to the end of its latest occurrence that has a continuation; it
    grows by a few dict writes per token, so a lookup costs O(1) whatever the prompt length.
    """

    def __init__(self, tokens: list[int], n_max: int = NGRAM_MAX, n_min: int = NGRAM_MIN):
        self.sizes = range(n_max, n_min - 1, -1)
        self.seq: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            self.seq.append(tok)
            end = len(self.seq) - 2  # the n-grams ending here now have a continuation
            for n in self.sizes:
                if end - n + 1 >= 0:
                    self.index[tuple(self.seq[end - n + 1 : end + 1])] = end

    def propose(self, k: int) -> list[int]:
        seq = self.seq
        for n in self.sizes:
            if len(seq) < n:
                continue
            end = self.index.get(tuple(seq[-n:]))
            if end is not None:
                return seq[end + 1 : end + 1 + k]
        return []


# --- a draft model --------------------------------------------------------------------------------


def check_vocab_metadata(target: GGUFInfo, draft: GGUFInfo) -> None:
    """Refuse, from the GGUF headers alone, a draft whose tokenizer cannot be the target's."""
    if target.tokenizer_model != draft.tokenizer_model:
        raise InvalidOptionError(
            f"{draft.path} cannot draft for {target.path}: their tokenizers differ "
            f"({draft.tokenizer_model} vs {target.tokenizer_model}); use a draft model of the same family"
        )
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_MAX_SIZE_DIFFERENCE:
        raise InvalidOptionError(
            f"{draft.path} cannot draft for {target.path}: their vocabularies differ in size "
            f"({draft.n_vocab} vs {target.n_vocab} tokens); use a draft model of the same family"
        )


def check_vocab_tokens(target_vocab: Any, draft_vocab: Any, target_path: str, draft_path: str) -> None:
    """Refuse a draft whose token ids do not mean the target's tokens (same ids, same texts,
    same special tokens), as llama.cpp's common_speculative_are_compatible does."""

    def fail(what: str) -> None:
        raise InvalidOptionError(
            f"{draft_path} cannot draft for {target_path}: {what}; use a draft model of the same family"
        )

    if L.llama_vocab_type(target_vocab) != L.llama_vocab_type(draft_vocab):
        fail("their tokenizer types differ")
    if (
        L.llama_vocab_get_add_bos(target_vocab) != L.llama_vocab_get_add_bos(draft_vocab)
        or L.llama_vocab_bos(target_vocab) != L.llama_vocab_bos(draft_vocab)
        or L.llama_vocab_eos(target_vocab) != L.llama_vocab_eos(draft_vocab)
    ):
        fail("their BOS/EOS tokens differ")
    n = min(L.llama_vocab_n_tokens(target_vocab), L.llama_vocab_n_tokens(draft_vocab))
    for tok in range(VOCAB_CHECK_START, n):
        if L.llama_vocab_get_text(target_vocab, tok) != L.llama_vocab_get_text(draft_vocab, tok):
            fail(f"token {tok} differs")


class Drafter:
    """A draft model loaded beside a target: its own context with one KV sequence per target
    slot (same ids), holding the same tokens as the target's sequence up to the last step.

    Draws greedy drafts for several streams at once: one draft-model decode per drafted
    position for all of them (their catch-up tokens first: the prompt on the first step, the
    last accepted tokens afterwards). Runs on the compute thread (the scheduler's step).
    """

    def __init__(
        self,
        path: str,
        info: GGUFInfo,
        n_slots: int,
        num_ctx: int,
        threads: int,
        n_batch: int,
        kv_type: Any,
        flash_attn: int,
    ):
        self.path = path
        self.info = info
        self.estimate: MemoryEstimate | None = None  # set by whoever checked it fits
        self.n_batch = max(n_batch, n_slots)
        mparams = L.llama_model_default_params()
        self.model = compute.call(L.llama_model_load_from_file, path.encode(), mparams)
        if not self.model:
            raise ModelFileError(f"llama.cpp could not load the draft model {path}")
        cparams = L.llama_context_default_params()
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.n_seq_max = n_slots
        cparams.n_ctx = num_ctx * n_slots
        cparams.kv_unified = False  # one stream per sequence, as the target's (llamacpp.py)
        cparams.flash_attn_type = flash_attn
        cparams.type_k = cparams.type_v = kv_type
        cparams.n_batch = cparams.n_ubatch = self.n_batch
        cparams.n_outputs_max = n_slots  # one row of logits per stream per draft step
        self.ctx = compute.call(L.llama_init_from_model, self.model, cparams)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise EngineError(f"llama.cpp could not create a context for the draft model {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.mem = L.llama_get_memory(self.ctx)
        self.caches: list[list[int]] = [[] for _ in range(n_slots)]  # tokens each sequence's cells hold
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)

    def propose(self, wants: list[tuple[int, list[int], int]], n_target_vocab: int) -> list[list[int]]:
        """wants: (sequence id, the stream's tokens so far, most tokens to draft) per stream;
        returns the drafts, in order. The sequence's cells end up holding the tokens so far plus
        every draft but the last."""
        drafts: list[list[int]] = [[] for _ in wants]
        active: list[int] = []  # indexes into wants still drafting
        # Catch up: bring each sequence to the stream's tokens so far (cut what differs).
        feeds: list[tuple[int, list[int]]] = []
        for i, (seq, history, _k) in enumerate(wants):
            cache = self.caches[seq]
            keep = min(_common_prefix(cache, history), len(history) - 1)  # the last token is fed for its logits
            if keep < len(cache):
                L.llama_memory_seq_rm(self.mem, seq, keep, -1)
                del cache[keep:]
            feeds.append((i, history[keep:]))
        for i, row in self._decode_feeds(feeds, wants):
            if self._take(i, row, wants, drafts, n_target_vocab):
                active.append(i)
        # Draft: one decode per position for every stream still drafting.
        while active:
            batch_feeds = [(i, [drafts[i][-1]]) for i in active]
            active = [
                i
                for i, row in self._decode_feeds(batch_feeds, wants)
                if self._take(i, row, wants, drafts, n_target_vocab)
            ]
        return drafts

    def _take(
        self, i: int, row: int, wants: list[tuple[int, list[int], int]], drafts: list[list[int]], n_target_vocab: int
    ) -> bool:
        """Append the draft model's greedy token from batch row `row` to stream i's draft if it is
        confident enough; True if stream i should draft another token."""
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        tok = int(np.argmax(logits))
        top = float(logits[tok])
        p_top = 1.0 / float(np.sum(np.exp(logits - top)))
        if p_top < P_MIN or tok >= n_target_vocab or L.llama_vocab_is_eog(self.vocab, tok):
            return False
        drafts[i].append(tok)
        return len(drafts[i]) < wants[i][2]

    def _decode_feeds(
        self, feeds: list[tuple[int, list[int]]], wants: list[tuple[int, list[int], int]]
    ) -> list[tuple[int, int]]:
        """Decode each stream's tokens: all but the last in chunks of the batch size (a prompt on
        the first step), then every stream's last token together in one decode with logits.
        Returns (stream, batch row of its logits)."""
        b = self._batch
        finals: list[tuple[int, int]] = []  # (stream, token) fed in the final decode
        for i, tokens in feeds:
            seq = wants[i][0]
            cache = self.caches[seq]
            head, last = tokens[:-1], tokens[-1]
            for start in range(0, len(head), self.n_batch):
                chunk = head[start : start + self.n_batch]
                for j, tok in enumerate(chunk):
                    _put(b, j, tok, len(cache) + j, seq, False)
                b.n_tokens = len(chunk)
                self._decode()
                cache.extend(chunk)
            finals.append((i, last))
        rows: list[tuple[int, int]] = []
        for n, (i, tok) in enumerate(finals):
            seq = wants[i][0]
            _put(b, n, tok, len(self.caches[seq]), seq, True)
            rows.append((i, n))
        b.n_tokens = len(finals)
        self._decode()
        for i, tok in finals:
            self.caches[wants[i][0]].append(tok)
        return rows

    def _decode(self) -> None:
        rc = L.llama_decode(self.ctx, self._batch)
        if rc != 0:
            for seq, cache in enumerate(self.caches):  # the cells' contents are unknown now
                L.llama_memory_seq_rm(self.mem, seq, -1, -1)
                cache.clear()
            raise EngineError(f"the draft model's llama_decode failed (code {rc})")

    def forget(self, seq: int) -> None:
        """Free a sequence's cells (its stream was cancelled or failed)."""
        L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.caches[seq].clear()

    def close(self) -> None:
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def load_drafter(
    path: str, info: GGUFInfo, target_info: GGUFInfo, target_vocab: Any, target_path: str, **kwargs: Any
) -> Drafter:
    """A Drafter for the target, after checking the vocabularies (headers first, then tokens)."""
    check_vocab_metadata(target_info, info)
    drafter = Drafter(path, info, **kwargs)
    try:
        check_vocab_tokens(target_vocab, drafter.vocab, target_path, path)
    except InvalidOptionError:
        drafter.close()
        raise
    return drafter


# --- per request ----------------------------------------------------------------------------------


@dataclass(eq=False)
class SpecState:
    """One request's speculation: where drafts come from, the adaptive length, the stats."""

    config: Speculation
    stats: SpecStats
    length: DraftLength
    lookup: NgramLookup | None = None
    drafter: Drafter | None = None
    n_target_vocab: int = 0
    fed: int = 0  # output tokens already given to the lookup index
    plain_first: bool = True  # the first decode step is plain: the request's own baseline
    payoff: Payoff = field(default_factory=Payoff)
    step_draft_ns: int = 0  # drafting time of this step (part of what the step cost)
    drafts: list[int] = field(default_factory=list)  # this step's drafts (in the batch)
    verifying: bool = False  # the scheduler is sampling this step's rows
    done: DoneReason | None = None  # the request ended during verification: its done reason

    @classmethod
    def create(cls, config: Speculation, prompt: list[int], drafter: Drafter | None, n_target_vocab: int) -> SpecState:
        mode = "draft" if drafter is not None else "lookup"
        lookup = NgramLookup(prompt) if drafter is None else NgramLookup(prompt, n_min=HYBRID_NGRAM_MIN)
        return cls(
            config=config,
            stats=SpecStats(mode=mode),
            length=DraftLength(config.draft_max),
            lookup=lookup,
            drafter=drafter,
            n_target_vocab=n_target_vocab,
        )


def propose(jobs: list[Job], budget: Callable[[Job, int], int]) -> None:
    """Fill `job.spec.drafts` for every speculating job of this step. `budget(job, k)` caps a
    job's draft at what the batch, the window and its length limit leave room for. Drafts the
    grammar forbids are cut here, before they cost a verification row."""
    by_drafter: dict[Drafter, list[tuple[Job, int]]] = {}
    for job in jobs:
        spec = _spec(job)
        spec.drafts = []
        spec.step_draft_ns = 0
        if spec.plain_first:
            spec.plain_first = False
            continue
        if not spec.payoff.should_draft():
            continue
        k = budget(job, spec.length.value)
        if k <= 0:
            continue
        t0 = time.perf_counter_ns()
        assert spec.lookup is not None, "every speculation keeps a lookup index (with a draft model: copies first)"
        new = job.output_ids[spec.fed :]
        spec.lookup.extend(new)
        spec.fed += len(new)
        copied = spec.lookup.propose(k)
        spec.step_draft_ns = time.perf_counter_ns() - t0
        spec.stats.draft_ns += spec.step_draft_ns
        if spec.drafter is not None and not copied:
            by_drafter.setdefault(spec.drafter, []).append((job, k))
            continue
        if spec.drafter is not None:
            spec.stats.lookup_steps += 1
        spec.drafts = _grammar_cut(job, copied)
    for drafter, group in by_drafter.items():
        t0 = time.perf_counter_ns()
        wants = [(job.held.seq, job.tokens + job.output_ids, k) for job, k in group]
        try:
            drafts = drafter.propose(wants, _spec(group[0][0]).n_target_vocab)
        except EngineError:  # the draft model failed (its cells are cleared): plain steps this time
            log.exception("the draft model %s failed; decoding without drafts this step", drafter.path)
            drafts = [[] for _ in group]
        for (job, _), draft in zip(group, drafts, strict=True):
            _spec(job).drafts = _grammar_cut(job, draft)
        elapsed = time.perf_counter_ns() - t0
        for job, _ in group:  # the streams drafted together: each waited for all of it
            spec = _spec(job)
            spec.stats.draft_ns += elapsed
            spec.step_draft_ns += elapsed


def _spec(job: Job) -> SpecState:
    """A speculating job's state (the scheduler passes only jobs with one here)."""
    assert job.spec is not None, "the job does not speculate"
    return job.spec


def _grammar_cut(job: Job, drafts: list[int]) -> list[int]:
    keep = job.sampler.grammar_prefix(drafts)
    _spec(job).stats.grammar_cut += len(drafts) - keep
    return drafts[:keep]


def record(job: Job, drafted: int, accepted: int, decode_ns: int) -> None:
    """Count one step of a speculating job: a speculative step if it verified drafts."""
    spec = _spec(job)
    stats = spec.stats
    if drafted:
        stats.steps += 1
        stats.drafted += drafted
        stats.accepted += accepted
        stats.verify_ns += decode_ns
        spec.length.update(drafted, accepted)
        spec.payoff.speculative(accepted + 1, spec.step_draft_ns + decode_ns)
        stats.pauses = spec.payoff.pauses
    else:
        stats.plain_steps += 1
        stats.plain_ns += decode_ns
        if spec.drafter is not None and spec.step_draft_ns:
            # the draft model ran and proposed nothing: a speculative step that yielded one token
            spec.payoff.speculative(1, spec.step_draft_ns + decode_ns)
            stats.pauses = spec.payoff.pauses
        else:
            spec.payoff.plain(decode_ns)


def _put(b: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    b.token[i] = token
    b.pos[i] = pos
    b.n_seq_id[i] = 1
    b.seq_id[i][0] = seq
    b.logits[i] = logits


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
