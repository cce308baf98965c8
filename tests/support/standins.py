"""Stand-in Ollama and OpenAI-compatible servers: real HTTP on 127.0.0.1, deterministic answers,
a record of every request, and fault knobs. For engine, gateway, load and resilience tests, and
for scripts that need a server without a model.

    from support.standins import OllamaStandin, OpenAIStandin

    with OllamaStandin(reply="Hello there.", token_delay=0.01) as server:
        engine = OllamaEngine(settings, host=server.url)
        ...
        server.requests[-1].body            # what the engine sent
        server.faults.drop_after = 3        # the next answers break off after 3 tokens

    with OpenAIStandin(flavor="llama-server", usage=False) as server:
        engine = OpenAIEngine(settings, base_url=server.base_url)

Both speak the documented wire formats (/work/shared/reference for Ollama; OpenAI's chat
completions, completions, embeddings and models, with vLLM's and llama-server's extras): NDJSON
(`application/x-ndjson`) and server-sent events (`text/event-stream`), stream:false JSON, and
errors as `{"error": ...}` bodies.

The answer is a fixed text (`reply`, or `reply(body)` per request), cut into "tokens" by
`split_tokens` (each token a run of non-space characters with the spaces before it), optionally
repeated to `num_tokens` tokens, and sent at `token_delay` seconds per token. `num_predict` /
`max_tokens` cut it short (done_reason "length"), `stop` sequences end it, `format` turns it into
JSON. Prompt token counts come from the same splitting (`prompt_tokens(body)`), so tests can
predict every number. Durations reported (Ollama's *_duration, llama-server's timings) are the
stand-in's own measured clock, so they are consistent with what a client measures.

Faults (`server.faults`, a `Faults`; set fields any time, they apply to the requests that arrive
after): `status` answers that HTTP status with an error body; `hang` never answers; `hang_after`,
`drop_after`, `error_after` stream K tokens and then go silent / close the connection / send an
in-band error; `first_token_delay` waits before the first token. `times` limits a fault to the
next N requests and `paths` to some endpoints.

`server.hold_streams(n)`: the answers that start from then on wait before their first token until
n requests are open at once (at most 10 s), once; a load test then sees its full concurrency
however late the machine starts a client thread.

From a shell:  python tests/support/standins.py ollama --port 11434 --token-delay 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog."
_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """The stand-ins' tokenizer: each token is a run of non-space characters with the spaces
    before it, so "".join(split_tokens(t)) == t."""
    return _TOKEN_RE.findall(text)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --- faults and records --------------------------------------------------------------------------


@dataclass
class Faults:
    """Ways to misbehave. K counts content tokens; K >= the answer's length breaks in after the
    last token, before the final chunk (the one with the stats)."""

    status: int | None = None  # answer this HTTP status with an error body
    message: str = "the model failed to generate a response"  # for status and error_after
    hang: bool = False  # accept the request and never answer (until the client or server quits)
    hang_after: int | None = None  # stream K tokens, then go silent, connection open
    drop_after: int | None = None  # stream K tokens, then close the connection (stream:false: half the body)
    error_after: int | None = None  # stream K tokens, then an in-band error
    first_token_delay: float = 0.0  # seconds before the first token
    times: int | None = None  # only the next N requests (decremented as they arrive); None = all
    paths: Sequence[str] | None = None  # only these paths (e.g. ["/api/chat"]); None = all

    def active(self) -> bool:
        return bool(
            self.status
            or self.hang
            or self.first_token_delay
            or self.hang_after is not None
            or self.drop_after is not None
            or self.error_after is not None
        )


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON, or None
    raw: bytes
    at_ns: int  # time.perf_counter_ns() on arrival


class _Drop(Exception):
    """Break the connection: the response is abandoned half-sent."""


class _InBandError(Exception):
    """Send an error inside the stream."""


_INVALID = object()


class _Stream:
    """A streamed response (ASGI) that can be abandoned half-way, which Starlette's
    StreamingResponse cannot do without an error trace: on _Drop it returns without finishing
    the body, and uvicorn closes the connection."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str):
        self.chunks = chunks
        self.media_type = media_type

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")],
            }
        )
        try:
            async for piece in self.chunks:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except (_Drop, OSError):
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Truncated:
    """A non-streamed response cut off half-way through its declared Content-Length."""

    def __init__(self, body: bytes, media_type: str = "application/json"):
        self.body = body
        self.media_type = media_type

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.media_type.encode()),
                    (b"content-length", str(len(self.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})


class _QuietDrops(logging.Filter):
    """Hide uvicorn's complaint about the responses we abandon on purpose (only ours)."""

    def __init__(self, thread_name: str):
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.threadName == self.thread_name
            and record.getMessage().startswith("ASGI callable returned without completing response")
        )


# --- the server machinery ------------------------------------------------------------------------


class StandinServer:
    """Runs an ASGI app with uvicorn in a background thread on 127.0.0.1 (a free port unless one
    is given). Use as a context manager, or start()/stop()."""

    kind = "standin"

    def __init__(
        self,
        *,
        reply: str | Callable[[dict[str, Any]], str] = DEFAULT_REPLY,
        num_tokens: int | None = None,
        token_delay: float = 0.0,
        tool_calls: list[dict[str, Any]] | None = None,
        embedding_dim: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
        thinking: str | None = None,
    ):
        self.reply = reply
        self.num_tokens = num_tokens  # repeat the reply's tokens to exactly this many
        self.token_delay = token_delay  # seconds between tokens
        self.tool_calls = tool_calls  # Ollama-shaped calls, answered when a request offers tools
        self.thinking = thinking  # reasoning sent before the answer (Ollama: unless "think": false)
        self.embedding_dim = embedding_dim
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.active = 0  # requests being answered right now (a stream counts until its end)
        self.max_active = 0  # the most at once since start
        self._hold: tuple[int, float] | None = None  # (n, deadline): see hold_streams
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._filter: _QuietDrops | None = None
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StandinServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        name = f"standin-{self.kind}-{self.port}"
        self._filter = _QuietDrops(name)
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"stand-in {self.kind} server did not start on port {self.port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung requests
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._filter is not None:
            logging.getLogger("uvicorn.error").removeFilter(self._filter)
        self._server = self._thread = self._filter = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def app(self) -> Any:
        """The routes, wrapped to count requests in flight (streams included) for load tests."""
        inner = Starlette(routes=self.routes())

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await inner(scope, receive, send)
            with self._lock:
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            try:
                await inner(scope, receive, send)
            finally:
                with self._lock:
                    self.active -= 1

        return counted

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def hold_streams(self, n: int, limit_s: float = 10.0) -> None:
        """Answers starting from now wait before their first token until `n` requests are open
        at once, or `limit_s` has passed; then the hold is over for good. (A client that never has
        `n` open costs one wait, and its test sees fewer than `n`.)"""
        self._hold = (n, time.monotonic() + limit_s)

    async def _wait_for_hold(self) -> None:
        while (hold := self._hold) is not None:
            n, deadline = hold
            if self.active >= n or time.monotonic() >= deadline:
                self._hold = None
                return
            await asyncio.sleep(0.005)

    # --- what tests look at ----------------------------------------------------------------------
    def received(self, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if path is None or r.path == path]

    def last(self, path: str | None = None) -> Recorded:
        found = self.received(path)
        if not found:
            raise AssertionError(f"the stand-in received no request{' to ' + path if path else ''}")
        return found[-1]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of the stand-in's vocabulary (grown on first sight of a token)."""
        ids = []
        for tok in split_tokens(text):
            if tok not in self._vocab:
                self._vocab[tok] = len(self._words) + 1000
                self._words.append(tok)
            ids.append(self._vocab[tok])
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(self._words[i - 1000] for i in ids if 0 <= i - 1000 < len(self._words))

    # --- answer content ----------------------------------------------------------------------------
    def answer(self, body: dict[str, Any], max_tokens: int | None, stop: Any, fmt: Any = None) -> tuple[list[str], str]:
        """The answer's tokens and why it ends ("stop" or "length")."""
        text = self.reply(body) if callable(self.reply) else self.reply
        if fmt == "json":
            text = json.dumps({"answer": text})
        elif isinstance(fmt, dict):
            text = json.dumps(_example(fmt))
        tokens = split_tokens(text)
        if self.num_tokens is not None and tokens:
            cycled = []
            for i, tok in zip(range(self.num_tokens), itertools.cycle(tokens)):
                if i >= len(tokens) and not tok[:1].isspace():
                    tok = " " + tok  # the repeat starts a new word
                cycled.append(tok)
            tokens = cycled
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        if stops:
            joined = "".join(tokens)
            cut = min((i for i in (joined.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                tokens = split_tokens(joined[:cut])
        if max_tokens is not None and 0 <= max_tokens < len(tokens):
            return tokens[:max_tokens], "length"
        return tokens, "stop"

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        """The prompt token count the stand-in reports for a request: chat messages cost their
        tokens plus 4 (template), plus 3 for the assistant header; a templated prompt costs 8
        more than its (system +) prompt tokens; a raw prompt exactly its tokens."""
        if isinstance(body.get("messages"), list):
            n = sum(len(split_tokens(_text(m.get("content")))) + 4 for m in body["messages"] if isinstance(m, dict))
            if body.get("tools"):
                n += len(split_tokens(json.dumps(body["tools"])))
            return n + 3
        prompt = body.get("prompt") or ""
        if isinstance(prompt, list):
            prompt = "".join(str(p) for p in prompt)
        if body.get("raw") or self.kind == "openai":  # /v1/completions prompts are raw
            return len(split_tokens(prompt))
        return len(split_tokens(body.get("system") or "")) + len(split_tokens(prompt)) + 8

    def embedding(self, text: str) -> list[float]:
        """A deterministic unit vector per text."""
        raw = []
        for i in range(self.embedding_dim):
            h = hashlib.sha256(f"{i}:{text}".encode()).digest()
            raw.append(int.from_bytes(h[:4], "big") / 2**31 - 1.0)
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        return [v / norm for v in raw]

    # --- request plumbing ----------------------------------------------------------------------------
    def endpoint(self, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        """Wrap a handler(request, body, fault): record the request, apply the whole-request
        faults (status, hang), reject malformed JSON."""

        async def run(request: Request) -> Any:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = _INVALID
            self.requests.append(
                Recorded(
                    method=request.method,
                    path=request.url.path,
                    headers=dict(request.headers),
                    body=None if body is _INVALID else body,
                    raw=raw,
                    at_ns=time.perf_counter_ns(),
                )
            )
            fault = self._take_fault(request.url.path)
            if fault is not None and fault.hang:
                await self._hang(request)
                return self.error(503, "stand-in server stopping")
            if fault is not None and fault.status:
                return self.error(fault.status, fault.message)
            if body is _INVALID:
                return self.error(400, "invalid JSON in the request body")
            if request.method == "POST" and not isinstance(body, dict):
                return self.error(400, "the request body must be a JSON object")
            return await handler(request, body or {}, fault)

        return run

    def error(self, status: int, message: str, **extra: Any) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    def _take_fault(self, path: str) -> Faults | None:
        with self._lock:
            f = self.faults
            if not f.active() or (f.paths is not None and path not in f.paths):
                return None
            if f.times is not None:
                if f.times <= 0:
                    return None
                f.times -= 1
            return dataclasses.replace(f)

    async def _hang(self, request: Request) -> None:
        """Hold the request without answering until the client gives up or the server stops."""
        while not self._stopping.is_set():
            try:
                message = await asyncio.wait_for(request.receive(), 0.05)
            except TimeoutError:
                continue
            if message.get("type") == "http.disconnect":
                return

    async def emit(self, tokens: list[str], fault: Faults | None, request: Request) -> AsyncIterator[str]:
        """The answer's tokens at the configured pace, breaking off where a fault says."""
        for i in range(len(tokens) + 1):
            if fault is not None:
                if fault.hang_after == i:
                    await self._hang(request)
                    raise _Drop
                if fault.drop_after == i:
                    raise _Drop
                if fault.error_after == i:
                    raise _InBandError(fault.message)
            if i == len(tokens):
                return
            if i == 0 and self._hold is not None:
                await self._wait_for_hold()
            if i == 0 and fault is not None and fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
            elif i > 0 and self.token_delay:
                await asyncio.sleep(self.token_delay)
            yield tokens[i]

    def wants_tools(self, body: dict[str, Any]) -> bool:
        """Call the tools when they are offered, unless the conversation ends with their results
        (then answer in text, as a model does)."""
        messages = body.get("messages") or []
        answered = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        return bool(self.tool_calls and body.get("tools")) and not answered


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _example(schema: dict[str, Any]) -> Any:
    """A small value that satisfies a simple JSON schema (for format=schema answers)."""
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "object" or "properties" in schema:
        return {k: _example(v if isinstance(v, dict) else {}) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_example(schema["items"])] if isinstance(schema.get("items"), dict) else []
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "standin")


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _sse(obj: Any) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# --- Ollama ----------------------------------------------------------------------------------------


def _tagged(name: str) -> str:
    """Ollama's names: "llama3.2" means "llama3.2:latest"."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaStandin(StandinServer):
    """Speaks Ollama's API: /api/chat, /api/generate (NDJSON or stream:false), /api/embed,
    /api/embeddings, /api/tags, /api/show, /api/ps, /api/version, and / ("Ollama is running").
    A model not in `models` gets 404 {"error": "model 'x' not found"}. The first request for a
    model "loads" it (sleeping `load_delay`, reported as load_duration); keep_alive is honoured
    in /api/ps, and an empty prompt with keep_alive 0 unloads."""

    kind = "ollama"

    def __init__(
        self,
        models: Sequence[str] = ("standin:latest", "standin-embed:latest"),
        *,
        load_delay: float = 0.0,
        version: str = "0.12.3",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.models = [_tagged(m) for m in models]
        self.load_delay = load_delay
        self.version = version
        self.loaded: dict[str, dict[str, Any]] = {}  # name -> {"expires_at": datetime | None, "num_ctx": int}

    def routes(self) -> list[Route]:
        return [
            Route("/", self._root, methods=["GET", "HEAD"]),
            Route("/api/version", self.endpoint(self._version), methods=["GET"]),
            Route("/api/tags", self.endpoint(self._tags), methods=["GET"]),
            Route("/api/ps", self.endpoint(self._ps), methods=["GET"]),
            Route("/api/show", self.endpoint(self._show), methods=["POST"]),
            Route("/api/chat", self.endpoint(self._chat), methods=["POST"]),
            Route("/api/generate", self.endpoint(self._generate), methods=["POST"]),
            Route("/api/embed", self.endpoint(self._embed), methods=["POST"]),
            Route("/api/embeddings", self.endpoint(self._embeddings), methods=["POST"]),
        ]

    # --- helpers -------------------------------------------------------------------------------
    def _model(self, body: dict[str, Any]) -> tuple[str | None, Response | None]:
        name = body.get("model") or body.get("name")
        if not name or not isinstance(name, str):
            return None, self.error(400, "model is required")
        if _tagged(name) not in self.models:
            return None, self.error(404, f"model '{name}' not found")
        return _tagged(name), None

    def _details(self, name: str) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "135M",
            "quantization_level": "Q4_1",
        }

    def _digest(self, name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    async def _load(self, name: str, body: dict[str, Any]) -> int:
        """Load the model if needed; the load time in ns, as Ollama reports it."""
        t0 = time.perf_counter_ns()
        if name not in self.loaded and self.load_delay:
            await asyncio.sleep(self.load_delay)
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        entry = self.loaded.setdefault(name, {"num_ctx": 4096})
        if options.get("num_ctx"):
            entry["num_ctx"] = int(options["num_ctx"])
        keep = body.get("keep_alive", 300)
        seconds = _seconds(keep)
        entry["expires_at"] = (
            datetime.now(UTC) + timedelta(days=365 * 290)
            if seconds < 0
            else datetime.now(UTC) + timedelta(seconds=seconds)
        )
        return time.perf_counter_ns() - t0

    def _after(self, name: str, body: dict[str, Any]) -> None:
        if "keep_alive" in body and _seconds(body["keep_alive"]) == 0:
            self.loaded.pop(name, None)

    def _stats(
        self, t0: int, load_ns: int, t_loaded: int, first: int | None, last: int | None, prompt_n: int, eval_n: int
    ) -> dict[str, Any]:
        end = time.perf_counter_ns()
        return {
            "total_duration": end - t0,
            "load_duration": load_ns,
            "prompt_eval_count": prompt_n,
            "prompt_eval_duration": (first or end) - t_loaded,
            "eval_count": eval_n,
            "eval_duration": (last - first) if first and last else 0,
        }

    # --- endpoints -------------------------------------------------------------------------------
    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        return JSONResponse({"version": self.version})

    async def _tags(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        return JSONResponse(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "modified_at": "2025-05-10T08:06:48.639712648-07:00",
                        "size": 91_739_296,
                        "digest": self._digest(m),
                        "details": self._details(m),
                    }
                    for m in self.models
                ]
            }
        )

    async def _ps(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        return JSONResponse(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "size": 120_000_000,
                        "digest": self._digest(m),
                        "details": self._details(m),
                        "expires_at": e["expires_at"].isoformat(),
                        "size_vram": 0,
                        "context_length": e["num_ctx"],
                    }
                    for m, e in self.loaded.items()
                ]
            }
        )

    async def _show(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        name, err = self._model(body)
        if err:
            return err
        embed = "embed" in name
        return JSONResponse(
            {
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {name}\n',
                "parameters": 'stop                           "<|im_end|>"',
                "template": "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n",
                "details": self._details(name),
                "model_info": {
                    "general.architecture": "llama",
                    "general.file_type": 3,
                    "general.parameter_count": 134_515_008,
                    "general.quantization_version": 2,
                    "llama.attention.head_count": 9,
                    "llama.attention.head_count_kv": 3,
                    "llama.attention.layer_norm_rms_epsilon": 1e-05,
                    "llama.block_count": 30,
                    "llama.context_length": 8192,
                    "llama.embedding_length": 576,
                    "llama.feed_forward_length": 1536,
                    "llama.rope.dimension_count": 64,
                    "llama.rope.freq_base": 100000,
                    "llama.vocab_size": 49152,
                    "tokenizer.ggml.bos_token_id": 1,
                    "tokenizer.ggml.eos_token_id": 2,
                    "tokenizer.ggml.model": "gpt2",
                    "tokenizer.ggml.tokens": [],
                },
                "capabilities": ["embedding"] if embed else ["completion", "tools"],
                "modified_at": "2025-05-10T08:06:48.639712648-07:00",
            }
        )

    async def _chat(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Any:
        name, err = self._model(body)
        if err:
            return err
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            return self.error(400, "messages must be an array")
        return await self._answer(request, body, fault, name, chat=True, empty=not messages)

    async def _generate(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Any:
        name, err = self._model(body)
        if err:
            return err
        return await self._answer(request, body, fault, name, chat=False, empty=not body.get("prompt"))

    async def _answer(
        self, request: Request, body: dict[str, Any], fault: Faults | None, name: str, chat: bool, empty: bool
    ) -> Any:
        t0 = time.perf_counter_ns()
        head = {"model": body["model"], "created_at": _now_iso()}
        if empty:  # load or unload, one JSON object either way (as Ollama does)
            if "keep_alive" in body and _seconds(body["keep_alive"]) == 0:
                self.loaded.pop(name, None)
                reason = "unload"
            else:
                await self._load(name, body)
                reason = "load"
            out = {**head, "done": True, "done_reason": reason}
            out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            return JSONResponse(out)

        load_ns = await self._load(name, body)
        t_loaded = time.perf_counter_ns()
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        use_tools = chat and self.wants_tools(body)
        if use_tools:
            tokens, reason = split_tokens(json.dumps(self.tool_calls)), "stop"
        else:
            tokens, reason = self.answer(body, options.get("num_predict"), options.get("stop"), body.get("format"))
        prompt_n = self.prompt_tokens(body)

        def piece(text: str) -> dict[str, Any]:
            if chat:
                return {**head, "message": {"role": "assistant", "content": text}, "done": False}
            return {**head, "response": text, "done": False}

        thinks = chat and self.thinking and body.get("think") is not False

        def final(first: int | None, last: int | None, text: str, calls: bool = False) -> dict[str, Any]:
            out = piece(text)
            if calls:
                out["message"]["tool_calls"] = self.tool_calls
            if thinks and body.get("stream", True) is False:
                out["message"]["thinking"] = self.thinking
            out.update(done=True, done_reason=reason)
            if not chat:
                out["context"] = self.tokenize(body.get("prompt") or "") + self.tokenize("".join(tokens))
            out.update(self._stats(t0, load_ns, t_loaded, first, last, prompt_n, len(tokens)))
            return out

        if body.get("stream", True) is False:
            first = last = None
            try:
                async for _ in self.emit(tokens, fault, request):
                    last = time.perf_counter_ns()
                    first = first or last
            except _Drop:
                self._after(name, body)
                return _Truncated(json.dumps(final(first, last, "")).encode())
            except _InBandError as exc:
                return self.error(500, str(exc))
            self._after(name, body)
            return JSONResponse(final(first, last, "" if use_tools else "".join(tokens), calls=use_tools))

        async def lines() -> AsyncIterator[bytes]:
            first = last = None
            try:
                if thinks:
                    thought = piece("")
                    thought["message"]["thinking"] = self.thinking
                    yield _ndjson(thought)
                async for tok in self.emit([] if use_tools else tokens, fault, request):
                    last = time.perf_counter_ns()
                    first = first or last
                    yield _ndjson(piece(tok))
                if use_tools:  # Ollama sends the calls in a chunk of their own, then the final one
                    calls = piece("")
                    calls["message"]["tool_calls"] = self.tool_calls
                    yield _ndjson(calls)
            except _InBandError as exc:
                yield _ndjson({"error": str(exc)})
                return
            finally:
                self._after(name, body)
            yield _ndjson(final(first, last, ""))

        return _Stream(lines(), "application/x-ndjson")

    async def _embed(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        name, err = self._model(body)
        if err:
            return err
        t0 = time.perf_counter_ns()
        load_ns = await self._load(name, body)
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self.error(400, "input must be a string or an array of strings")
        return JSONResponse(
            {
                "model": body["model"],
                "embeddings": [self.embedding(text) for text in inputs],
                "total_duration": time.perf_counter_ns() - t0,
                "load_duration": load_ns,
                "prompt_eval_count": sum(len(split_tokens(t)) for t in inputs),
            }
        )

    async def _embeddings(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        name, err = self._model(body)
        if err:
            return err
        await self._load(name, body)
        return JSONResponse({"embedding": self.embedding(body.get("prompt") or "")})


def _seconds(keep_alive: Any) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "1h30m", "300ms")."""
    if isinstance(keep_alive, int | float) and not isinstance(keep_alive, bool):
        return float(keep_alive)
    text = str(keep_alive).strip()
    try:
        return float(text)
    except ValueError:
        pass
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text))


# --- OpenAI-compatible -----------------------------------------------------------------------------


Flavor = Literal["vllm", "llama-server", "plain"]


class OpenAIStandin(StandinServer):
    """Speaks the OpenAI API under /v1: chat/completions and completions (SSE ending in
    `data: [DONE]`, with a usage chunk when stream_options.include_usage; or JSON), embeddings,
    models, models/{id}; plus /health.

    `flavor` picks a server's extras: "vllm" (max_model_len in /v1/models; /tokenize and
    /detokenize taking `prompt`), "llama-server" (a `timings` object in the final chunk and
    response; `meta` in /v1/models; /tokenize taking `content`), "plain" (neither). `usage=False`
    is a server that never reports usage; `cached_tokens` is reported as prompt-cache hits;
    `api_key` makes every /v1 request need that bearer token; `check_model=False` answers for any
    model name (as llama-server does)."""

    kind = "openai"

    def __init__(
        self,
        models: Sequence[str] = ("standin-model",),
        *,
        flavor: Flavor = "vllm",
        usage: bool = True,
        cached_tokens: int = 0,
        api_key: str | None = None,
        check_model: bool = True,
        max_model_len: int = 8192,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.models = list(models)
        self.flavor = flavor
        self.usage = usage
        self.cached_tokens = cached_tokens
        self.api_key = api_key
        self.check_model = check_model
        self.max_model_len = max_model_len
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.endpoint(self._health), methods=["GET"]),
            Route("/v1/models", self.endpoint(self._models), methods=["GET"]),
            Route("/v1/models/{model:path}", self.endpoint(self._model_entry), methods=["GET"]),
            Route("/v1/chat/completions", self.endpoint(self._chat), methods=["POST"]),
            Route("/v1/completions", self.endpoint(self._completions), methods=["POST"]),
            Route("/v1/embeddings", self.endpoint(self._embeddings), methods=["POST"]),
            Route("/tokenize", self.endpoint(self._tokenize), methods=["POST"]),
            Route("/detokenize", self.endpoint(self._detokenize), methods=["POST"]),
        ]

    def error(self, status: int, message: str, **extra: Any) -> Response:
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "NotFoundError"}.get(
            status, "server_error"
        )
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": None, "code": extra.get("code", status)}},
            status_code=status,
        )

    def endpoint(self, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        inner = super().endpoint(handler)

        async def run(request: Request) -> Any:
            if self.api_key and request.url.path.startswith("/v1"):
                if request.headers.get("authorization") != f"Bearer {self.api_key}":
                    await request.body()
                    return self.error(401, "Incorrect API key provided.", code="invalid_api_key")
            return await inner(request)

        return run

    def _check(self, body: dict[str, Any]) -> Response | None:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return self.error(400, "model is required")
        if self.check_model and name not in self.models:
            return self.error(404, f"The model `{name}` does not exist.")
        return None

    def _entry(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": name, "object": "model", "created": 1_715_000_000, "owned_by": "standin"}
        if self.flavor == "vllm":
            entry.update(root=name, parent=None, max_model_len=self.max_model_len)
        elif self.flavor == "llama-server":
            entry["meta"] = {
                "vocab_type": 2,
                "n_vocab": 49152,
                "n_ctx_train": 8192,
                "n_embd": 576,
                "n_params": 134_515_008,
                "size": 91_739_296,
            }
        return entry

    def _usage(self, prompt_n: int, completion_n: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_n,
            "completion_tokens": completion_n,
            "total_tokens": prompt_n + completion_n,
            "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt_n)},
        }

    def _timings(self, t_start: int, first: int | None, last: int | None, prompt_n: int, n: int) -> dict[str, Any]:
        """llama-server's timings object, from the stand-in's own clock."""
        end = time.perf_counter_ns()
        cache_n = min(self.cached_tokens, prompt_n)
        evaluated = prompt_n - cache_n
        prompt_ms = ((first or end) - t_start) / 1e6
        predicted_ms = ((last - first) if first and last else 0) / 1e6
        return {
            "cache_n": cache_n,
            "prompt_n": evaluated,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / evaluated if evaluated else 0.0,
            "prompt_per_second": evaluated / (prompt_ms / 1e3) if prompt_ms else 0.0,
            "predicted_n": n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / n if n else 0.0,
            "predicted_per_second": n / (predicted_ms / 1e3) if predicted_ms else 0.0,
        }

    # --- endpoints -------------------------------------------------------------------------------
    async def _health(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        return JSONResponse({"status": "ok"})

    async def _models(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        return JSONResponse({"object": "list", "data": [self._entry(m) for m in self.models]})

    async def _model_entry(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        name = request.path_params["model"]
        if name not in self.models:
            return self.error(404, f"The model `{name}` does not exist.")
        return JSONResponse(self._entry(name))

    async def _chat(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Any:
        if err := self._check(body):
            return err
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return self.error(400, "messages must be a non-empty array")
        return await self._complete(request, body, fault, chat=True)

    async def _completions(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Any:
        if err := self._check(body):
            return err
        if not isinstance(body.get("prompt"), str | list):
            return self.error(400, "prompt is required")
        return await self._complete(request, body, fault, chat=False)

    async def _complete(self, request: Request, body: dict[str, Any], fault: Faults | None, chat: bool) -> Any:
        t_start = time.perf_counter_ns()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-standin-{next(self._ids)}"
        created = int(time.time())
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        fmt = None
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_object":
            fmt = "json"
        elif isinstance(rf, dict) and rf.get("type") == "json_schema":
            fmt = (rf.get("json_schema") or {}).get("schema") or {}
        use_tools = chat and self.wants_tools(body)
        if use_tools:
            tokens, reason = [], "tool_calls"
        else:
            tokens, reason = self.answer(body, max_tokens, body.get("stop"), fmt)
            reason = "length" if reason == "length" else "stop"
        prompt_n = self.prompt_tokens(body)
        calls = (
            [
                {
                    "index": i,
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": json.dumps(c["function"].get("arguments", {})),
                    },
                }
                for i, c in enumerate(self.tool_calls or [])
            ]
            if use_tools
            else []
        )
        n_out = len(tokens) if not use_tools else len(split_tokens(json.dumps(self.tool_calls)))
        obj = "chat.completion" if chat else "text_completion"

        def choice(text: str | None, finish: str | None, delta: bool) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            key = "delta" if delta else "message"
            msg: dict[str, Any] = {} if delta and text is None else {"content": text}
            if not delta:
                msg["role"] = "assistant"
            return {"index": 0, key: msg, "logprobs": None, "finish_reason": finish}

        if body.get("stream") is not True:
            first = last = None
            try:
                async for _ in self.emit(tokens, fault, request):
                    last = time.perf_counter_ns()
                    first = first or last
            except _Drop:
                return _Truncated(json.dumps({"id": rid, "object": obj}).encode() + b" " * 64)
            except _InBandError as exc:
                return self.error(500, str(exc))
            ch = choice("".join(tokens) if not use_tools else None, reason, delta=False)
            if use_tools:
                ch["message"]["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
            out: dict[str, Any] = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": body["model"],
                "choices": [ch],
            }
            if self.usage:
                out["usage"] = self._usage(prompt_n, n_out)
            if self.flavor == "llama-server":
                out["timings"] = self._timings(t_start, first, last, prompt_n, n_out)
            return JSONResponse(out)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and self.usage
        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            out = {"id": rid, "object": chunk_obj, "created": created, "model": body["model"], "choices": choices}
            if include_usage:
                out["usage"] = None
            out.update(extra)
            return _sse(out)

        async def events() -> AsyncIterator[bytes]:
            first = last = None
            if chat:
                yield event(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            try:
                async for tok in self.emit(tokens, fault, request):
                    last = time.perf_counter_ns()
                    first = first or last
                    yield event([choice(tok, None, delta=True)])
            except _InBandError as exc:
                yield _sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": 500}})
                yield _sse("[DONE]")
                return
            if use_tools:
                for c in calls:  # name first, then the arguments in two fragments (as servers do)
                    args = c["function"]["arguments"]
                    half = len(args) // 2
                    head = {**c, "function": {"name": c["function"]["name"], "arguments": args[:half]}}
                    yield event(
                        [{"index": 0, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None}]
                    )
                    tail = {"index": c["index"], "function": {"arguments": args[half:]}}
                    yield event(
                        [{"index": 0, "delta": {"tool_calls": [tail]}, "logprobs": None, "finish_reason": None}]
                    )
            extra = {}
            if self.flavor == "llama-server":
                extra["timings"] = self._timings(t_start, first, last, prompt_n, n_out)
            yield event([choice(None, reason, delta=True)], **extra)
            if include_usage:
                yield _sse(
                    {
                        "id": rid,
                        "object": chunk_obj,
                        "created": created,
                        "model": body["model"],
                        "choices": [],
                        "usage": self._usage(prompt_n, n_out),
                    }
                )
            yield _sse("[DONE]")

        return _Stream(events(), "text/event-stream")

    async def _embeddings(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        if err := self._check(body):
            return err
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            return self.error(400, "input must be a string or a non-empty array of strings")
        n = sum(len(split_tokens(t)) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": self.embedding(t), "index": i} for i, t in enumerate(inputs)
                ],
                "model": body["model"],
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )

    async def _tokenize(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        if self.flavor == "plain":
            return PlainTextResponse("Not Found", status_code=404)
        if self.flavor == "vllm":
            ids = self.tokenize(body.get("prompt") or "")
            return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len})
        return JSONResponse({"tokens": self.tokenize(body.get("content") or "")})

    async def _detokenize(self, request: Request, body: dict[str, Any], fault: Faults | None) -> Response:
        if self.flavor == "plain":
            return PlainTextResponse("Not Found", status_code=404)
        text = self.detokenize([int(t) for t in body.get("tokens") or []])
        return JSONResponse({"prompt": text} if self.flavor == "vllm" else {"content": text})


# --- from a shell ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a stand-in Ollama or OpenAI-compatible server.")
    parser.add_argument("kind", choices=["ollama", "openai"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--num-tokens", type=int, default=None)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--model", action="append", help="a model name to serve (repeatable)")
    parser.add_argument("--flavor", choices=["vllm", "llama-server", "plain"], default="vllm")
    args = parser.parse_args(argv)
    common = dict(reply=args.reply, num_tokens=args.num_tokens, token_delay=args.token_delay, port=args.port)
    if args.kind == "ollama":
        server: StandinServer = OllamaStandin(args.model or ("standin:latest", "standin-embed:latest"), **common)
    else:
        server = OpenAIStandin(args.model or ("standin-model",), flavor=args.flavor, **common)
    with server:
        print(f"stand-in {args.kind} server at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
