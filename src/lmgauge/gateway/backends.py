"""Where the gateway's answers come from, behind one async interface.

- `EngineBackend`: any lmgauge engine through the library (`Client`): the embedded llama.cpp
  engine by default, or `ollama:` / `openai:` models. Engines are synchronous iterators, so each
  request's stream runs on a worker thread and its chunks cross to the event loop through a queue.
- `UpstreamPool`: one model served by several Ollama or OpenAI-compatible nodes (config
  `[[gateway.upstreams]]`). Requests go to the healthy node with the fewest outstanding
  requests; a node that fails before the first token is marked down and the request moves to
  the next one; a failure after it becomes a clean error (the client has already seen text).
  Health checks run in the background. The nodes are spoken to directly over a pooled aiohttp
  session, asynchronously: a thread per upstream request would cap the gateway's throughput.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..client import Client
from ..config import UpstreamSettings
from ..engines.base import Engine
from ..errors import (
    EngineError,
    EngineUnavailableError,
    FirstTokenTimeoutError,
    LmgaugeError,
    RequestTimeoutError,
    UpstreamStatusError,
)
from ..models import ModelRef
from ..types import ChatRequest, Chunk, Embeddings, GenerateRequest, Message, Options
from ..wire import ollama as ollama_wire
from ..wire import openai as openai_wire
from .health import NodeHealth, probe_body

log = logging.getLogger("lmgauge.gateway")
Request = ChatRequest | GenerateRequest


@dataclass
class Trace:
    """What happened to one request on its way through a backend (for the log and metrics)."""

    upstream: str | None = None
    failovers: list[str] = field(default_factory=list)  # nodes that failed before another took over
    deadline: float | None = None  # the event loop's clock: when the whole request must be done


# --- library engines ------------------------------------------------------------------------------


class EngineBackend:
    """A model served by an lmgauge engine (embedded llama.cpp unless the name says otherwise)."""

    kind = "engine"

    def __init__(self, client: Client, ref: ModelRef):
        self.client = client
        self.ref = ref
        self.engine: Engine = client.engine(ref)
        self.concurrency = max(client.settings.parallel, 1) if ref.engine == "llamacpp" else 32
        # Server-side configuration decides speculation; whatever a request carried is replaced.
        self.speculation = client.speculation(ref)

    @property
    def embedded(self) -> bool:
        return self.ref.engine == "llamacpp"

    @property
    def identity(self) -> str:
        """What answers: engine kind, server and the model there (shared state is keyed by it)."""
        return f"{self.ref.engine}|{self.ref.url or ''}|{self.ref.target}"

    # The context guard's questions: exact prompt tokens and the window, where the engine knows them.
    def prompt_tokens(self, request: Request) -> int | None:
        if not self.embedded:
            return None
        engine: Any = self.engine
        if isinstance(request, ChatRequest):
            return len(engine.chat_tokens(self.ref.target, request.messages, request.tools))
        if request.raw:
            return len(engine.prompt_tokens(self.ref.target, request.prompt))
        messages = ([Message("system", request.system)] if request.system else []) + [Message("user", request.prompt)]
        return len(engine.chat_tokens(self.ref.target, messages))

    def window(self, options: Options) -> int | None:
        if not self.embedded:
            return None
        engine: Any = self.engine
        return options.num_ctx or engine.default_num_ctx(self.ref.target)

    def stream(self, request: Request, stream: bool, trace: Trace) -> AsyncGenerator[Chunk, None]:
        request = dataclasses.replace(request, model=self.ref.target)  # the client's request stays as sent
        trace.upstream = self.ref.url
        request.speculation = self.speculation
        if isinstance(request, ChatRequest):
            chat = request
            return _threaded(lambda: self.engine.chat(chat))
        generate = request
        return _threaded(lambda: self.engine.generate(generate))

    async def embed(self, inputs: list[str]) -> Embeddings:
        return await asyncio.to_thread(self.engine.embed, self.ref.target, inputs)

    async def load(self, options: Options, keep_alive: float | None) -> None:
        engine: Any = self.engine
        if self.embedded:
            runner, _ = await asyncio.to_thread(engine.acquire, self.ref.target, options)
            engine.release(runner, keep_alive)

    async def unload(self) -> None:
        await asyncio.to_thread(self.engine.unload, self.ref.target)

    async def close(self) -> None:
        pass


async def _threaded(make: Any) -> AsyncGenerator[Chunk, None]:
    """Run a synchronous chunk iterator on its own thread; hand its chunks to the event loop.

    When the consumer stops early (client gone, timeout), the thread is told to close the
    engine's iterator, which cancels the request inside the engine and frees its slot.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def pump() -> None:
        iterator: Iterator[Chunk] | None = None
        try:
            iterator = make()
            for chunk in iterator:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(items.put_nowait, ("chunk", chunk))
                if chunk.done:
                    return
            if not stop.is_set():
                loop.call_soon_threadsafe(
                    items.put_nowait, ("error", EngineError("the engine ended a stream without a result"))
                )
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            if not stop.is_set():
                loop.call_soon_threadsafe(items.put_nowait, ("error", exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=pump, name="lmgauge-gateway-stream", daemon=True).start()
    try:
        while True:
            what, value = await items.get()
            if what == "error":
                raise value
            yield value
            if value.done:
                return
    finally:
        stop.set()


# --- upstream nodes -------------------------------------------------------------------------------


@dataclass
class Node:
    url: str
    kind: str  # "ollama" | "openai"
    max_concurrency: int
    health: NodeHealth
    outstanding: int = 0
    checked_at: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.health.up

    @property
    def last_error(self) -> str | None:
        return self.health.last_error


class UpstreamPool:
    kind = "upstream"

    def __init__(
        self,
        spec: UpstreamSettings,
        session: aiohttp.ClientSession,
        connect_timeout: float = 5.0,
        first_token_timeout: float | None = None,
        cooldown: float = 5.0,
    ):
        self.spec = spec
        self.name = spec.model
        self.target = spec.target or spec.model
        self.first_token_timeout = first_token_timeout  # per node tried; None: only the request's deadline
        self.nodes = [Node(url, spec.kind, spec.max_concurrency, NodeHealth(cooldown)) for url in spec.urls]
        self.session = session
        self.concurrency = spec.max_concurrency * len(self.nodes)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout)
        self._rr = 0
        self._tokenizer: EngineBackend | None = None

    @property
    def identity(self) -> str:
        """What answers: the pool's kind, nodes and the model there (shared state is keyed by it)."""
        return f"upstream-{self.spec.kind}|{','.join(sorted(n.url for n in self.nodes))}|{self.target}"

    # --- context guard ---------------------------------------------------------------------------
    def attach_tokenizer(self, backend: EngineBackend) -> None:
        """A local GGUF with the nodes' vocabulary (config `tokenizer`) gives exact prompt counts."""
        self._tokenizer = backend

    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    def prompt_tokens(self, request: Request) -> int | None:
        return self._tokenizer.prompt_tokens(request) if self._tokenizer else None

    def window(self, options: Options) -> int | None:
        return options.num_ctx or self.spec.num_ctx

    # --- choosing a node -------------------------------------------------------------------------
    def ranked(self) -> list[Node]:
        """Healthy nodes by fewest outstanding requests (ties rotate), then the unhealthy ones as
        a last resort: a health check may be stale, and trying beats refusing."""
        self._rr = (self._rr + 1) % len(self.nodes)
        order = self.nodes[self._rr :] + self.nodes[: self._rr]
        healthy = sorted((n for n in order if n.healthy), key=lambda n: n.outstanding)
        return healthy + [n for n in order if not n.healthy]

    def _down(self, node: Node, why: str) -> None:
        if node.health.failed(why):
            log.warning(
                "upstream %s for %s marked down for at least %gs: %s", node.url, self.name, node.health.cooldown_s, why
            )

    def _up(self, node: Node, how: str) -> None:
        if node.health.succeeded():
            log.warning("upstream %s for %s is back (%s)", node.url, self.name, how)

    def _budget(self, trace: Trace) -> float | None:
        """How long the next node may take to send its first token: the first-token timeout,
        cut to what is left of the request's deadline."""
        left = None if trace.deadline is None else trace.deadline - asyncio.get_running_loop().time()
        if self.first_token_timeout is None:
            return left
        return self.first_token_timeout if left is None else min(self.first_token_timeout, left)

    # --- generation ------------------------------------------------------------------------------
    async def stream(self, request: Request, stream: bool, trace: Trace) -> AsyncGenerator[Chunk, None]:
        errors: list[str] = []
        failed: list[str] = []  # counted as failovers only if another node then answers
        timeouts = 0
        for node in self.ranked():
            budget = self._budget(trace)
            if budget is not None and budget <= 0:
                break  # the request's deadline is spent: the caller reports the timeout
            node.outstanding += 1
            started = False
            chunks = self._call(node, request, stream)
            try:
                trace.upstream = node.url
                try:
                    async with asyncio.timeout(budget):
                        first = await chunks.__anext__()
                except TimeoutError as exc:
                    if isinstance(exc, aiohttp.ClientError):
                        raise  # aiohttp's own connect timeout: a connection failure
                    raise FirstTokenTimeoutError(f"no first token within {budget:g}s") from None
                started = True
                self._up(node, "answered a request")
                trace.failovers.extend(failed)
                yield first
                if not first.done:
                    async for chunk in chunks:
                        yield chunk
                return
            except UpstreamStatusError as exc:
                if exc.status < 500:
                    raise  # the request's fault (unknown model, bad option): another node agrees
                failure = str(exc)
            except FirstTokenTimeoutError as exc:
                timeouts += 1
                failure = str(exc)
            except (aiohttp.ClientError, OSError, ValueError, EngineUnavailableError, StopAsyncIteration) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                await chunks.aclose()  # closes the node's connection if it is still open
                node.outstanding -= 1
            self._down(node, failure)
            if started:
                raise EngineUnavailableError(f"upstream {node.url} failed mid-stream: {failure}")
            errors.append(f"{node.url}: {failure}")
            failed.append(node.url)
        if errors and timeouts == len(errors):
            raise RequestTimeoutError(
                f"{self.name}: no node sent the first token in time (gateway.first_token_timeout): " + "; ".join(errors)
            )
        if not errors:
            raise RequestTimeoutError(
                f"{self.name}: the request's deadline passed before a node could be tried (gateway.request_timeout)"
            )
        raise EngineUnavailableError(f"every upstream for {self.name} failed: " + "; ".join(errors))

    async def _post(self, node: Node, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json"}
        if self.spec.api_key is not None:
            headers["Authorization"] = f"Bearer {self.spec.api_key.get_secret_value()}"
        response = await self.session.post(
            node.url + path, data=orjson.dumps(body), timeout=self._timeout, headers=headers
        )
        if response.status != 200:
            text = (await response.read()).decode("utf-8", "replace")
            response.release()
            try:
                message = orjson.loads(text).get("error", text)
                if isinstance(message, dict):
                    message = message.get("message", text)
            except (orjson.JSONDecodeError, AttributeError):
                message = text
            raise UpstreamStatusError(node.url, response.status, str(message)[:500])
        return response

    async def _call(self, node: Node, request: Request, stream: bool) -> AsyncGenerator[Chunk, None]:
        if node.kind == "ollama":
            if isinstance(request, ChatRequest):
                path, body = "/api/chat", ollama_wire.chat_body(request, self.target, stream)
            else:
                path, body = "/api/generate", ollama_wire.generate_body(request, self.target, stream)
        elif isinstance(request, GenerateRequest) and request.raw:
            path, body = "/completions", openai_wire.completion_body(request, self.target, stream)
        else:
            path, body = "/chat/completions", openai_wire.chat_body(_as_chat(request), self.target, stream)
        response = await self._post(node, path, body)
        try:
            if not stream:
                obj = orjson.loads(await response.read())
                chunks = ollama_wire.StreamReader(self.name).feed(obj) if node.kind == "ollama" else None
                if chunks is None:
                    reader = openai_wire.StreamReader(self.name)
                    reader.feed(obj)
                    chunks = [Chunk(done=True, result=reader.result())]
                result = chunks[-1].result
                if not result:
                    raise EngineUnavailableError("the upstream answered without a final object")
                if result.content or result.thinking:
                    yield Chunk(content=result.content, thinking=result.thinking)
                yield Chunk(done=True, result=result)
                return
            parse = self._ollama_events if node.kind == "ollama" else self._openai_events
            async for chunk in parse(response):
                yield chunk
        finally:
            response.release()

    async def _ollama_events(self, response: aiohttp.ClientResponse) -> AsyncGenerator[Chunk, None]:
        reader = ollama_wire.StreamReader(self.name)
        async for line in _lines(response):
            for chunk in reader.feed(orjson.loads(line)):
                yield chunk
                if chunk.done:
                    return
        raise EngineUnavailableError("the upstream closed the stream before its final message")

    async def _openai_events(self, response: aiohttp.ClientResponse) -> AsyncGenerator[Chunk, None]:
        reader = openai_wire.StreamReader(self.name)
        async for line in _lines(response):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                yield Chunk(done=True, result=reader.result())
                return
            event = orjson.loads(data)
            error = openai_wire.error_of(event) if isinstance(event, dict) else None
            if error is not None:
                raise EngineError(f"upstream error: {error[1]}")
            for chunk in reader.feed(event):
                yield chunk
        raise EngineUnavailableError("the upstream closed the stream before [DONE]")

    # --- the rest --------------------------------------------------------------------------------
    async def embed(self, inputs: list[str]) -> Embeddings:
        errors = []
        t0 = time.perf_counter_ns()
        for node in self.ranked():
            node.outstanding += 1
            try:
                if node.kind == "ollama":
                    response = await self._post(node, "/api/embed", {"model": self.target, "input": inputs})
                    emb = ollama_wire.embeddings_from_wire(orjson.loads(await response.read()), self.name)
                else:
                    response = await self._post(node, "/embeddings", openai_wire.embeddings_body(self.target, inputs))
                    emb = openai_wire.embeddings_from_wire(orjson.loads(await response.read()), self.name, len(inputs))
                response.release()
                emb.load_ns, emb.total_ns = 0, time.perf_counter_ns() - t0
                return emb
            except UpstreamStatusError as exc:
                if exc.status < 500:
                    raise
                errors.append(f"{node.url}: {exc}")
                self._down(node, str(exc))
            except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError, EngineError) as exc:
                errors.append(f"{node.url}: {exc}")
                self._down(node, str(exc))
            finally:
                node.outstanding -= 1
        raise EngineUnavailableError(f"every upstream for {self.name} failed: " + "; ".join(errors))

    async def load(self, options: Options, keep_alive: float | None) -> None:
        await self._broadcast(keep_alive)

    async def unload(self) -> None:
        await self._broadcast(0)

    async def _broadcast(self, keep_alive: float | None) -> None:
        """Load/unload on every Ollama node (an empty generate request, Ollama's convention)."""
        body: dict[str, Any] = {"model": self.target}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        for node in self.nodes:
            if node.kind != "ollama":
                continue
            try:
                response = await self._post(node, "/api/generate", body)
                response.release()
            except (LmgaugeError, aiohttp.ClientError, OSError) as exc:
                log.warning("load/unload on %s failed: %s", node.url, exc)

    async def show(self) -> dict[str, Any] | None:
        for node in self.ranked():
            if node.kind != "ollama":
                return None
            try:
                response = await self._post(node, "/api/show", {"model": self.target})
                obj: dict[str, Any] | None = orjson.loads(await response.read())
                response.release()
                return obj
            except (LmgaugeError, aiohttp.ClientError, OSError, ValueError):
                continue
        return None

    async def check_health(self) -> None:
        """Nodes that are up: the liveness URL (Ollama's /api/version, an OpenAI server's
        /models). Nodes that are down and done cooling down: a one-token generation, since a node
        can pass a liveness check and still never answer (health.py)."""
        liveness = aiohttp.ClientTimeout(total=2.0)
        probe_s = self.first_token_timeout or 30.0

        async def check(node: Node) -> None:
            if node.healthy:
                path = "/api/version" if node.kind == "ollama" else "/models"
                headers = (
                    {"Authorization": f"Bearer {self.spec.api_key.get_secret_value()}"}
                    if self.spec.api_key is not None
                    else None
                )
                try:
                    async with self.session.get(node.url + path, timeout=liveness, headers=headers) as response:
                        await response.read()
                        ok, why = response.status == 200, f"health check answered {response.status}"
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    ok, why = False, f"health check failed: {type(exc).__name__} {exc}"
                if not ok:
                    self._down(node, why)
            elif node.health.probe_due():
                path, body = probe_body(node.kind, self.target)
                try:
                    async with asyncio.timeout(probe_s):
                        response = await self._post(node, path, body)
                        await response.read()
                        response.release()
                    self._up(node, "a test generation passed")
                except UpstreamStatusError as exc:
                    if exc.status < 500:  # it answered (e.g. an embedding model refuses a chat): alive
                        self._up(node, f"answered a test generation with {exc.status}")
                    else:
                        self._down(node, f"test generation failed: {exc}")
                except TimeoutError:
                    self._down(node, f"test generation: no answer within {probe_s:g}s")
                except (LmgaugeError, aiohttp.ClientError, OSError) as exc:
                    self._down(node, f"test generation failed: {type(exc).__name__} {exc}")
            node.checked_at = time.time()

        await asyncio.gather(*(check(n) for n in self.nodes))

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "model": self.name,
                "url": n.url,
                "kind": n.kind,
                "healthy": n.healthy,
                "outstanding": n.outstanding,
                "last_error": n.last_error,
                "times_down": n.health.times_down,
                "cooling_for_s": round(n.health.cooling_for(), 3),
                "changed_at": n.health.last_change,
            }
            for n in self.nodes
        ]

    async def close(self) -> None:
        pass


def _as_chat(request: Request) -> ChatRequest:
    """A templated generate as the conversation an OpenAI-compatible server templates itself."""
    if isinstance(request, ChatRequest):
        return request
    system = [Message("system", request.system)] if request.system else []
    return ChatRequest(
        model=request.model,
        messages=system + [Message("user", request.prompt)],
        options=request.options,
        format=request.format,
        keep_alive=request.keep_alive,
    )


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Lines of a streamed body of any length (aiohttp's readline caps line length)."""
    buffer = b""
    async for data in response.content.iter_any():
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end].strip(), buffer[end + 1 :]
            if line:
                yield line
    if buffer.strip():
        yield buffer.strip()
