"""The default engine: llama.cpp embedded in this process, through llama-cpp-python's low-level API.

Why the low-level API rather than `llama_cpp.Llama`: the decode loop is ours (scheduler.py), so
several requests can share one `llama_decode` per step, prompt prefixes can be reused across
requests, and the engine's own clock is taken right at the decode calls. Flash attention is left
on "auto" (llama.cpp's default, which the high-level class turns off) and threads match the
physical cores.

A loaded model (a `Runner`) stays in memory for a keep-alive period after its last request
(default 5 minutes, like Ollama), then a reaper thread unloads it. Loading is timed and
reported as `load_ns` of the request that caused it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp.llama_cpp as L
import psutil

from ..config import Settings
from ..errors import (
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    InsufficientMemoryError,
    InvalidOptionError,
    ModelFileError,
    ShuttingDownError,
)
from ..limits import check_context, check_prompt_fits
from ..models import GGUFInfo, inspect_gguf, local_models
from ..sizing import MemoryEstimate, estimate, format_size, parse_size
from ..types import (
    ChatRequest,
    Chunk,
    Embeddings,
    GenerateRequest,
    LoadedModel,
    Message,
    ModelInfo,
    Options,
    Result,
    Speculation,
    Timings,
)
from . import client_text, compute, thinking, toolcalls
from .chat_template import ChatTemplate
from .sampling import Sampler, StopMatcher, grammar_for
from .scheduler import ErrorEvent, Job, Scheduler, TextEvent
from .speculative import Drafter, SpecState, load_drafter

log = logging.getLogger("lmgauge.llama")

# How long a request for another window of a model waits for the instance in use to finish before
# it is refused as busy (a model file has one instance at a time: see LlamaCppEngine.acquire).
WINDOW_WAIT_S = 120.0

KV_TYPES = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


@L.llama_log_callback  # type: ignore[untyped-decorator]  # llama_cpp's ctypes CFUNCTYPE is unannotated
def _llama_log(level: int, text: bytes, _user_data: Any) -> None:
    log.debug(text.decode("utf-8", "replace").rstrip())


def _init_backend() -> None:
    L.llama_log_set(_llama_log, ctypes.c_void_p(0))
    L.llama_backend_init()


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


class Runner:
    """One model loaded for generation: weights, a context with `n_slots` KV sequences of
    `num_ctx` tokens each, and the scheduler thread that decodes for it."""

    def __init__(self, path: str, num_ctx: int, settings: Settings, embedding: bool = False, draft_max: int = 0):
        t0 = time.perf_counter_ns()
        self.path = path
        self.info: GGUFInfo = inspect_gguf(path)
        self.num_ctx = num_ctx
        self.embedding = embedding
        self.settings = settings
        self.n_slots = 1 if embedding else max(settings.parallel, 1)
        # Rows of logits one step may ask for: one per sequence, plus room for speculative drafts
        # when the request that loaded the model speculates (each drafted token needs a row).
        self.n_outputs = self.n_slots * (1 + max(draft_max, 0))
        self.drafters: dict[str, Drafter] = {}
        self.estimate = (
            None if embedding else check_fits(self.info, num_ctx, self.n_slots, settings, n_outputs=self.n_outputs)
        )
        mparams = L.llama_model_default_params()
        self.model = compute.call(L.llama_model_load_from_file, path.encode(), mparams)
        if not self.model:
            raise ModelFileError(
                f"llama.cpp could not load {path} (unsupported architecture or corrupt file; "
                "run with LMGAUGE_LOG=debug to see llama.cpp's reason)"
            )
        cparams = L.llama_context_default_params()
        threads = settings.threads or default_threads()
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.n_seq_max = self.n_slots
        cparams.n_ctx = num_ctx * self.n_slots
        # One KV stream per sequence, not one cache shared by all: in a shared cache a freed
        # sequence's cells are refilled by whoever decodes next, so a sequence's cells stop being
        # in position order, flash attention sums them in another order, and a greedy answer
        # changed with what other requests happened to run (SmolLM2, 4 requests arriving a few
        # steps apart: 5 of 6 runs parted from the answers given alone; with streams: none).
        # A shared prefix is then copied between streams (scheduler.py) instead of shared.
        cparams.kv_unified = False
        cparams.flash_attn_type = FLASH_ATTN[settings.flash_attn]
        cparams.type_k = cparams.type_v = KV_TYPES[settings.kv_type]
        cparams.no_perf = False
        if embedding:
            cparams.embeddings = True
            cparams.n_batch = cparams.n_ubatch = num_ctx  # a whole input in one pass
            if self.info.pooling in (None, "NONE"):
                cparams.pooling_type = L.LLAMA_POOLING_TYPE_MEAN
        else:
            cparams.n_batch = cparams.n_ubatch = max(settings.n_batch, self.n_slots)
            # The scheduler asks for at most one row of logits per sequence per step; without
            # this llama.cpp reserves logits for every token of a batch (98 MiB for SmolLM2).
            cparams.n_outputs_max = self.n_outputs
        self.ctx = compute.call(L.llama_init_from_model, self.model, cparams)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise EngineError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {path} "
                "(out of memory? try a smaller num_ctx, see `lmgauge size`)"
            )
        self.vocab = L.llama_model_get_vocab(self.model)
        # llama.cpp pads the context to a multiple of 256 cells but clamps n_batch to the n_ctx
        # it was asked for: the window is what was asked (num_ctx 400 is a 400-token window, not
        # 512), and prompts go to llama_decode in chunks of the n_batch it really has. A larger
        # batch aborts the process (GGML_ASSERT n_tokens_all <= n_batch).
        self.n_ctx_seq = min(num_ctx, L.llama_n_ctx(self.ctx) // self.n_slots)
        n_batch = L.llama_n_batch(self.ctx)
        self.threads = threads
        self.template = make_template(self.info, self.vocab)
        self.scheduler = (
            None
            if embedding
            else Scheduler(self.ctx, self.vocab, self.n_slots, self.n_ctx_seq, n_batch, self.n_outputs)
        )
        self.lock = threading.Lock()  # serialises embedding calls
        self.users = 0
        self.expires_at: float | None = None  # time.monotonic(); None while in use or forever
        self.keep_alive = settings.keep_alive
        self.load_ns = time.perf_counter_ns() - t0

    # --- tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return tokenize(self.vocab, text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return detokenize(self.vocab, tokens)

    def prompt_tokens(self, text: str) -> list[int]:
        return prompt_tokens(self.vocab, self.template, text)

    def chat_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        return chat_prompt_tokens(self.vocab, self.template, *toolcalls.template_inputs(self.template, messages, tools))

    # --- lifecycle -----------------------------------------------------------------------------
    def drafter(self, path: str) -> Drafter:
        """The draft model at `path`, loaded beside this one on first use (vocabularies checked,
        memory estimated and refused before loading when it cannot fit). Its KV cache has the
        target's slots and window."""
        with self.lock:
            drafter = self.drafters.get(path)
            if drafter is None:
                info = inspect_gguf(path)
                est = check_fits(info, self.num_ctx, self.n_slots, self.settings, what="the draft model")
                drafter = load_drafter(
                    path,
                    info,
                    self.info,
                    self.vocab,
                    self.path,
                    n_slots=self.n_slots,
                    num_ctx=self.num_ctx,
                    threads=self.threads,
                    n_batch=self.settings.n_batch,
                    kv_type=KV_TYPES[self.settings.kv_type],
                    flash_attn=FLASH_ATTN[self.settings.flash_attn],
                )
                drafter.estimate = est  # its share of size_bytes
                self.drafters[path] = drafter
            return drafter

    @property
    def size_bytes(self) -> int:
        """What this runner holds in memory: the sizing estimate (validated against measured
        RSS by benchmarks/sizing_accuracy.py) plus its draft models', or weights + state for
        embedding runners."""
        if self.estimate is not None:
            return self.estimate.total_bytes + sum(d.estimate.total_bytes for d in self.drafters.values() if d.estimate)
        return int(L.llama_model_size(self.model)) + int(L.llama_state_get_size(self.ctx))

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        for drafter in self.drafters.values():
            drafter.close()
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def check_fits(
    info: GGUFInfo,
    num_ctx: int,
    n_slots: int,
    settings: Settings,
    n_outputs: int | None = None,
    what: str = "this model",
) -> MemoryEstimate:
    """Estimate what loading will cost and refuse, before loading, what cannot fit: the
    memory available now, or settings.memory_limit when set."""
    est = estimate(
        info,
        num_ctx,
        kv_type=settings.kv_type,
        n_parallel=n_slots,
        n_batch=settings.n_batch,
        flash_attn=settings.flash_attn != "off",
        n_outputs=n_outputs,
    )
    available = psutil.virtual_memory().available
    limit, what = available, "available"
    if settings.memory_limit:
        cap = parse_size(settings.memory_limit)
        if cap < limit:
            limit, what = cap, "allowed by memory_limit"
    if est.total_bytes > limit:
        raise InsufficientMemoryError(
            f"loading {what} with num_ctx {num_ctx} x {n_slots} parallel needs about "
            f"{format_size(est.total_bytes)} (weights {format_size(est.weights_bytes)}, KV cache "
            f"{format_size(est.kv_bytes)}, buffers {format_size(est.compute_bytes + est.output_bytes)}) "
            f"but only {format_size(limit)} is {what}; lower num_ctx or parallel, or use kv_type q8_0 "
            "(see `lmgauge size`)"
        )
    return est


def make_template(info: GGUFInfo, vocab: Any) -> ChatTemplate:
    return ChatTemplate(
        info.chat_template,
        bos_token=_token_text(vocab, L.llama_vocab_bos(vocab)),
        eos_token=_token_text(vocab, L.llama_vocab_eos(vocab)),
    )


def _token_text(vocab: Any, token: int) -> str:
    if token < 0:
        return ""
    text = L.llama_vocab_get_text(vocab, token)
    return text.decode("utf-8", "replace") if text else ""


def prompt_tokens(vocab: Any, template: ChatTemplate, text: str) -> list[int]:
    """Tokens for a full prompt: BOS added when the model wants it and the text lacks it."""
    bos = template.bos_token
    add = L.llama_vocab_get_add_bos(vocab) and not (bos and text.startswith(bos))
    return tokenize(vocab, text, add_special=add)


def chat_prompt_tokens(
    vocab: Any,
    template: ChatTemplate,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    **variables: Any,
) -> list[int]:
    """A conversation's prompt tokens; control tokens come from the template only, never from
    message text (client_text.py). `variables`: extra template inputs (thinking.py)."""
    return client_text.chat_tokens(
        lambda text, special: tokenize(vocab, text, False, parse_special=special),
        lambda text: prompt_tokens(vocab, template, text),
        lambda msgs, tls: template.render(msgs, tls, **variables),
        messages,
        tools,
        control_initials(vocab, L.llama_vocab_n_tokens(vocab)),
    )


@functools.lru_cache(maxsize=32)
def control_initials(vocab: Any, n_tokens: int) -> frozenset[str]:
    """First characters of the vocabulary's control tokens (and `<`, `[` always): text without
    any of them cannot hold one. Read once per vocabulary (~40 ms for 49k tokens)."""
    mask = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED | L.LLAMA_TOKEN_ATTR_UNKNOWN
    found = {"<", "["}
    for i in range(n_tokens):
        if L.llama_vocab_get_attr(vocab, i) & mask:
            text = L.llama_vocab_get_text(vocab, i)
            if text:
                found.add(text.decode("utf-8", "replace")[:1])
    return frozenset(found)


def tokenize(vocab: Any, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
    """`parse_special`: whether control-token text (`<|im_start|>`) becomes control tokens. On for
    chat-template output and raw prompts; off for text a client wrote (client_text.py)."""
    data = text.encode("utf-8")
    capacity = len(data) + 8
    buf = (L.llama_token * capacity)()
    n = L.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    if n < 0:  # buffer too small: -n is the size needed
        capacity = -n
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, parse_special)
    return list(buf[:n])


def detokenize(vocab: Any, tokens: list[int]) -> str:
    arr = (L.llama_token * len(tokens))(*tokens)
    capacity = 8 * len(tokens) + 16
    buf = ctypes.create_string_buffer(capacity)
    n = L.llama_detokenize(vocab, arr, len(tokens), buf, capacity, False, False)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = L.llama_detokenize(vocab, arr, len(tokens), buf, -n, False, False)
    return buf.raw[:n].decode("utf-8", "replace")


class LlamaCppEngine:
    """The Engine protocol over embedded llama.cpp; `model` arguments are GGUF paths."""

    name = "llamacpp"

    def __init__(self, settings: Settings):
        _init_backend()
        self.settings = settings
        self._runners: dict[tuple[str, int, bool], Runner] = {}
        self._vocab_models: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a runner's last user leaves
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    # --- loading and keep-alive ----------------------------------------------------------------
    def default_num_ctx(self, path: str) -> int:
        trained = inspect_gguf(path).n_ctx_train or self.settings.num_ctx
        return min(self.settings.num_ctx, trained)

    def _num_ctx(self, path: str, options: Options) -> int:
        if options.num_ctx is None:
            return self.default_num_ctx(path)
        check_context(options.num_ctx, inspect_gguf(path).n_ctx_train)
        return options.num_ctx

    def acquire(
        self, path: str, options: Options, embedding: bool = False, speculation: Speculation | None = None
    ) -> tuple[Runner, int]:
        """A runner for this model and window (loading it if needed) and the load time in ns.
        The caller must `release()` it. A speculating request that loads the model gives it
        room for its drafts' logits."""
        num_ctx = self._num_ctx(path, options)
        key = (path, num_ctx, embedding)
        draft_max = speculation.draft_max if speculation and speculation.mode != "off" else 0
        with self._lock:
            runner, loaded = self._take_or_load(key, draft_max)
            runner.users += 1
            runner.expires_at = None
            return runner, runner.load_ns if loaded else 0

    def _take_or_load(self, key: tuple[str, int, bool], draft_max: int) -> tuple[Runner, bool]:
        """The runner for `key`, loading it if needed. One instance per model file (and kind) at a
        time, like Ollama: a new window size replaces the instance once it is idle, and waits
        for it while it is busy (up to WINDOW_WAIT_S). Otherwise each client-chosen `num_ctx`
        would load another copy of the model, and a few concurrent requests could fill memory."""
        path, _, embedding = key
        deadline = time.monotonic() + WINDOW_WAIT_S
        while True:
            if self._closed.is_set():  # nothing loads after close(), and a waiter learns why at once
                raise ShuttingDownError(f"{path}: the engine is shutting down; this request was not started")
            runner = self._runners.get(key)
            if runner is not None and runner.users == 0 and runner.n_outputs < runner.n_slots * (1 + draft_max):
                # Loaded without room for drafts' logits and idle: reload with it. (A busy one
                # serves the request with the rows it has: fewer drafts per step.)
                self._unload(key)
                runner = None
            if runner is not None:
                return runner, False
            others = [k for k in self._runners if k[0] == path and k[2] == embedding]
            if not any(self._runners[k].users for k in others):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineBusyError(
                    f"{path}: busy with another window size (num_ctx {others[0][1]}); a model runs one window size "
                    f"at a time, and this request waited {WINDOW_WAIT_S:g}s for it. Retry later, or send the same "
                    "num_ctx as the other clients"
                )
            self._idle.wait(min(left, 1.0))
        for other in others:
            self._unload(other)
        runner = Runner(path, key[1], self.settings, embedding=embedding, draft_max=draft_max)
        self._runners[key] = runner
        self._start_reaper()
        return runner, True

    def release(self, runner: Runner, keep_alive: float | None) -> None:
        with self._lock:
            runner.users -= 1
            if keep_alive is not None:
                runner.keep_alive = keep_alive
            if runner.users > 0:
                return
            self._idle.notify_all()
            if runner.keep_alive == 0:
                key = (runner.path, runner.num_ctx, runner.embedding)
                if self._runners.get(key) is runner:
                    self._unload(key)
            elif runner.keep_alive < 0:
                runner.expires_at = None
            else:
                runner.expires_at = time.monotonic() + runner.keep_alive

    def _unload(self, key: tuple[str, int, bool]) -> None:
        runner = self._runners.pop(key)
        runner.close()

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="lmgauge-keepalive", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while not self._closed.wait(0.5):
            now = time.monotonic()
            with self._lock:
                for key, runner in list(self._runners.items()):
                    if runner.users == 0 and runner.expires_at is not None and runner.expires_at <= now:
                        self._unload(key)
                if not self._runners:
                    self._reaper = None
                    return

    # --- generation ----------------------------------------------------------------------------
    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        return self._stream(
            request.model,
            request.options,
            request.keep_alive,
            request.format,
            lambda r: r.chat_tokens(request.messages, request.tools),
            speculation=request.speculation,
            chat=request,
        )

    def generate(self, request: GenerateRequest) -> Iterator[Chunk]:
        def prompt(runner: Runner) -> list[int]:
            if request.raw:
                return runner.prompt_tokens(request.prompt)
            messages = [Message("system", request.system)] if request.system else []
            messages.append(Message("user", request.prompt))
            return runner.chat_tokens(messages)

        return self._stream(
            request.model,
            request.options,
            request.keep_alive,
            request.format,
            prompt,
            keep_ids=True,
            speculation=request.speculation,
        )

    def _stream(
        self,
        path: str,
        options: Options,
        keep_alive: float | None,
        fmt: Any,
        make_prompt: Callable[[Runner], list[int]],
        keep_ids: bool = False,
        speculation: Speculation | None = None,
        chat: ChatRequest | None = None,
    ) -> Iterator[Chunk]:
        t_call = time.perf_counter_ns()
        grammar = grammar_for(fmt)  # validate before loading anything
        runner, load_ns = self.acquire(path, options, speculation=speculation)
        job: Job | None = None
        try:
            plan, splitter = None, None
            if chat is not None:
                client_text.refuse_control_text_in_tools(  # before toolcalls.py folds tools into text
                    lambda text, special: tokenize(runner.vocab, text, False, parse_special=special),
                    chat.messages,
                    chat.tools,
                    control_initials(runner.vocab, L.llama_vocab_n_tokens(runner.vocab)),
                )
                plan = toolcalls.plan(runner.template, chat.messages, chat.tools, chat.tool_choice, chat.forced_tool)
                variables = thinking.template_variables(runner.template, chat.think)
                messages, tools = (plan.messages, plan.template_tools) if plan else (chat.messages, chat.tools)
                prompt_text = runner.template.render(messages, tools, **variables)  # for the thinking splitter
                # client text tokenized as plain text: control tokens come from the template only
                tokens = chat_prompt_tokens(runner.vocab, runner.template, messages, tools, **variables)
                if thinking.template_thinks(runner.template):
                    splitter = thinking.ThinkingSplitter.for_prompt(prompt_text)
                if plan is not None and plan.required:
                    grammar = plan.grammar  # a call must come out, whatever `format` said
            else:
                tokens = make_prompt(runner)
            if not tokens:  # an empty raw prompt: llama.cpp cannot decode an empty batch
                raise InvalidOptionError("the prompt is empty: a raw prompt needs some text to continue")
            window = runner.n_ctx_seq
            check_prompt_fits(len(tokens), window)
            room = window - len(tokens)
            limit = options.num_predict if options.num_predict and options.num_predict > 0 else room
            t_draft, loaded = time.perf_counter_ns(), len(runner.drafters)
            spec = self._spec_state(runner, speculation, tokens)
            if len(runner.drafters) > loaded:  # this request loaded the draft model: part of its load time
                load_ns += time.perf_counter_ns() - t_draft
            sampler = Sampler(runner.vocab, options, grammar, lazy=plan.lazy(runner.vocab) if plan else None)
            assert runner.scheduler is not None, "a generation runner has a scheduler (embedding runners do not)"
            job = runner.scheduler.submit(
                Job(
                    tokens=tokens,
                    sampler=sampler,
                    max_tokens=min(limit, room),
                    stops=StopMatcher(options.stop),
                    reuse_cache=self.settings.prefix_cache,
                    spec=spec,
                )
            )
            parser = plan.parser() if plan is not None else None
            shown: list[str] = []  # the answer's text, reasoning and calls taken out
            thought: list[str] = []

            def split(text: str, last: bool = False) -> Chunk | None:
                """One piece of output as a Chunk of thinking, answer text and finished calls."""
                reasoning = ""
                if splitter is not None:
                    reasoning, text = splitter.finish() if last else splitter.feed(text)
                calls: list[dict[str, Any]] = []
                if parser is not None:
                    text, calls = parser.feed(text)
                    if last:
                        tail, more = parser.finish()
                        text, calls = text + tail, calls + more
                shown.append(text)
                thought.append(reasoning)
                return (
                    Chunk(content=text, thinking=reasoning, tool_calls=calls or None)
                    if text or reasoning or calls
                    else None
                )

            plain = splitter is None and parser is None
            while True:
                event = job.events.get()
                if isinstance(event, TextEvent):
                    if plain:
                        yield Chunk(content=event.text)
                    elif (chunk := split(event.text)) is not None:
                        yield chunk
                elif isinstance(event, ErrorEvent):
                    raise event.error
                else:
                    reason, stats = event.reason, event.stats
                    if not plain and (chunk := split("", last=True)) is not None:
                        yield chunk
                    reasoning = "".join(thought)
                    timings = Timings(
                        load_ns=load_ns,
                        prompt_tokens=stats.prompt_tokens,
                        cached_tokens=stats.cached_tokens,
                        prompt_eval_tokens=stats.prompt_tokens - stats.cached_tokens,
                        prompt_eval_ns=stats.prompt_eval_ns,
                        output_tokens=stats.output_tokens,
                        eval_ns=stats.eval_ns,
                        total_ns=time.perf_counter_ns() - t_call,
                        speculation=job.spec.stats if job.spec else None,
                        # the reasoning and its two tags, counted with the model's tokenizer
                        thinking_tokens=len(runner.tokenize(reasoning)) + 2 if reasoning else 0,
                    )
                    result = Result(
                        model=path,
                        content=runner.detokenize(job.output_ids) if plain else "".join(shown),
                        done_reason=reason,
                        timings=timings,
                        engine=self.name,
                        tool_calls=(parser.calls or None) if parser is not None else None,
                        context=tokens + job.output_ids if keep_ids else None,
                        thinking=reasoning,
                    )
                    yield Chunk(done=True, result=result)
                    return
        finally:
            if job is not None:
                job.cancel()  # no-op when finished; frees the slot when the caller stopped early
            self.release(runner, keep_alive)

    @staticmethod
    def _spec_state(runner: Runner, speculation: Speculation | None, tokens: list[int]) -> SpecState | None:
        if speculation is None or speculation.mode == "off":
            return None
        drafter = runner.drafter(speculation.draft) if speculation.draft else None
        return SpecState.create(speculation, tokens, drafter, L.llama_vocab_n_tokens(runner.vocab))

    # --- the rest of the protocol ----------------------------------------------------------------
    def embed(self, model: str, inputs: list[str]) -> Embeddings:
        t0 = time.perf_counter_ns()
        trained = inspect_gguf(model).n_ctx_train or 2048
        runner, load_ns = self.acquire(model, Options(num_ctx=min(trained, 8192)), embedding=True)
        vectors: list[list[float]] = []
        n_tokens = 0
        try:
            with runner.lock:
                for i, text in enumerate(inputs):
                    tokens = tokenize(runner.vocab, text, True, parse_special=False)  # client text
                    if not tokens:  # "" with a model that adds no BOS: llama.cpp cannot decode an empty batch
                        raise InvalidOptionError(f"embedding input {i} is empty: there is nothing to embed")
                    if len(tokens) > runner.n_ctx_seq:  # an embedding fills the window exactly: no output token
                        raise ContextOverflowError(len(tokens), runner.n_ctx_seq, what="embedding input")
                    n_tokens += len(tokens)
                    vectors.append(_embed_one(runner, tokens))
        finally:
            self.release(runner, None)
        return Embeddings(
            model=model, vectors=vectors, prompt_tokens=n_tokens, load_ns=load_ns, total_ns=time.perf_counter_ns() - t0
        )

    def _vocab(self, path: str) -> Any:
        with self._lock:
            for (p, _, _), runner in self._runners.items():
                if p == path:
                    return runner.vocab
            if path not in self._vocab_models:
                inspect_gguf(path)  # clear error for non-GGUF files
                params = L.llama_model_default_params()
                params.vocab_only = True
                model = compute.call(L.llama_model_load_from_file, path.encode(), params)
                if not model:
                    raise ModelFileError(f"llama.cpp could not read the vocabulary of {path}")
                self._vocab_models[path] = model
            return L.llama_model_get_vocab(self._vocab_models[path])

    def tokenize(self, model: str, text: str) -> list[int]:
        return tokenize(self._vocab(model), text, add_special=False)

    def detokenize(self, model: str, tokens: list[int]) -> str:
        return detokenize(self._vocab(model), tokens)

    def chat_tokens(self, model: str, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The exact prompt tokens a chat request would evaluate (template included)."""
        vocab = self._vocab(model)
        template = make_template(inspect_gguf(model), vocab)
        return chat_prompt_tokens(vocab, template, *toolcalls.template_inputs(template, messages, tools))

    def prompt_tokens(self, model: str, text: str) -> list[int]:
        """The exact tokens a raw (untemplated) prompt evaluates, BOS included when the model wants it."""
        vocab = self._vocab(model)
        return prompt_tokens(vocab, make_template(inspect_gguf(model), vocab), text)

    def info(self, model: str) -> ModelInfo:
        gguf_info = inspect_gguf(model)
        details = gguf_info.summary()
        details["template"] = gguf_info.chat_template or "(none: ChatML is used)"
        return ModelInfo(
            name=model, engine=self.name, source="file", path=model, size_bytes=gguf_info.file_size, details=details
        )

    def list_models(self) -> list[ModelInfo]:
        return local_models(self.settings)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            now_mono, now = time.monotonic(), time.time()
            return [
                LoadedModel(
                    name=r.path,
                    engine=self.name,
                    size_bytes=r.size_bytes,
                    context_length=r.num_ctx,
                    expires_at=None if r.expires_at is None else now + (r.expires_at - now_mono),
                    path=r.path,
                    details={"slots": r.n_slots, "threads": r.threads, "embedding": r.embedding, "active": r.users},
                )
                for r in self._runners.values()
            ]

    def unload(self, model: str) -> None:
        """Free the model now if nothing is using it; else once its last in-flight request ends
        (`keep_alive: 0` from one client must not pull the model from under another's stream)."""
        with self._lock:
            for key in [k for k in self._runners if k[0] == model]:
                runner = self._runners[key]
                if runner.users > 0:
                    runner.keep_alive = 0  # release() unloads it when the last user leaves
                else:
                    self._unload(key)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for key in list(self._runners):
                self._unload(key)
            for model in self._vocab_models.values():
                L.llama_model_free(model)
            self._vocab_models.clear()


def _embed_one(runner: Runner, tokens: list[int]) -> list[float]:
    """One pooled, L2-normalised embedding (runner.lock held)."""
    L.llama_memory_clear(L.llama_get_memory(runner.ctx), True)
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(tokens)
        encoder_only = L.llama_model_has_encoder(runner.model) and not L.llama_model_has_decoder(runner.model)
        rc = compute.call(L.llama_encode if encoder_only else L.llama_decode, runner.ctx, batch)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to embed the input (code {rc})")
        n_embd = L.llama_model_n_embd(runner.model)
        ptr = L.llama_get_embeddings_seq(runner.ctx, 0)
        if not ptr:
            raise EngineError("this model returned no pooled embedding")
        vec = [float(ptr[i]) for i in range(n_embd)]
    finally:
        L.llama_batch_free(batch)
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]
