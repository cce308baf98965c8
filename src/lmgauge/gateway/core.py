"""One request's way through the gateway, whichever API it came in by:

    prepare:  resolve the model (aliases, upstream pools, `auto` via the router, else the
              library's resolution), count its exact prompt tokens against the window (guard.py),
              take an admission slot (admission.py)
    run:      the backend's chunks, with first-token and total deadlines; the first chunk is
              awaited before the HTTP status is sent, so anything that fails before it (every
              upstream down, a timeout) is still a proper error status
    record:   metrics, the rolling monitor and the request log (queued, written off the path)

`auto` escalates as `lmgauge run auto` does: while a larger tier is left, an attempt whose
answer fails the router's check, or that fails with an error a larger tier may not have (a
prompt over a small window, an engine down), is held back and the next tier answers, with its
own admission slot, inside the same request deadline. Every attempt is a request-log row (the
ones left behind with status `escalated`, all with `extra.route`) and counted in
`lmgauge_escalations_total`; the client only ever sees the answer it gets.

The API modules translate wire formats and call `prepare` / `start_stream` / `complete`; the
gateway-specific concerns live here and in the modules it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..client import Client
from ..config import Settings
from ..errors import (
    ContextOverflowError,
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    InvalidOptionError,
    LmgaugeError,
    RequestTimeoutError,
    ShuttingDownError,
    UnknownModelError,
)
from ..monitor import Monitor, Sample
from ..stats import percentile, span_ms, tpot_ms
from ..store import RequestRecord, Store
from ..types import ChatRequest, Chunk, Embeddings, GenerateRequest, Options, Result
from . import guard
from .admission import Admission
from .allowlist import Allowlist
from .backends import EngineBackend, Trace, UpstreamPool
from .metrics import GatewayMetrics
from .reqlog import LogWriter
from .shutdown import Cutoff

log = logging.getLogger("lmgauge.gateway")
Request = ChatRequest | GenerateRequest
Backend = EngineBackend | UpstreamPool
RESOLVE_TTL_S = 10.0  # how long a resolved name is reused (resolution scans model folders)
PS_TIMEOUT_S = 2.0  # how long /api/ps waits for a remote engine to say what it has loaded


class Tier(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...


class Router(Protocol):
    """What the gateway needs of routing/ (routing/gateway.py) for a request sent to `auto`."""

    def plan(self, request: Request) -> tuple[Sequence[Tier], str]:
        """The tiers to try in order, and why the first was chosen (blocking: a classifier runs)."""
        ...

    def check(self, request: Request, result: Result) -> str | None:
        """Why an answer visibly failed, so that the next tier should answer; None when usable."""
        ...

    def escalates(self, error: BaseException) -> bool:
        """Whether a larger tier may answer after this error."""
        ...


class ResponseCache(Protocol):
    """What the gateway needs of cache/ (cache/gateway.py): a stored answer for a request, and storing new ones. Called on the event
    loop: either fast plain functions or coroutines (for a network store such as Redis)."""

    def get(self, backend: str, request: Request) -> Result | None | Awaitable[Result | None]: ...

    def put(self, backend: str, request: Request, result: Result) -> None | Awaitable[None]: ...

    # `backend` is the resolved backend's identity (engine kind + server + target), never the
    # name the client sent: one name cannot read or write another backend's answers.


@dataclass
class Route:
    """An `auto` request on its way up the router's tiers."""

    request: Request  # as the client sent it: each tier's guard starts from this
    tiers: list[Tier]  # still to try; the first is the current one
    reason: str  # why the router chose the first tier
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the tiers left behind, and why

    @property
    def tier(self) -> Tier:
        return self.tiers[0]

    @property
    def last(self) -> bool:
        return len(self.tiers) == 1

    def log_entry(self) -> dict[str, Any]:
        """For the request log's `extra.route`: this row's tier and the escalations so far."""
        return {
            "tier": self.tier.name,
            "model": self.tier.model,
            "reason": self.reason,
            "attempts": [dict(a) for a in self.attempts],
        }


class _Escalate(Exception):
    """An attempt of an `auto` request was left behind (recorded): the next tier answers."""


@dataclass
class Outcome:
    """What became of one request, for the metrics, the rolling monitor and the request log."""

    api: str  # "ollama" | "openai"
    model: str  # the name the client asked for
    arrived_ns: int
    status: str  # ok | error | timeout | busy | cancel | overflow | invalid
    backend: Backend | None = None  # None when the name did not resolve
    prepared: Prepared | None = None  # None when the request failed before it was admitted
    error: BaseException | None = None
    first_ns: int | None = None  # first content chunk
    result: Result | None = None
    cache_hit: bool = False
    delivered: int = 0  # content chunks sent: what an answer cut short did output
    route: Route | None = None  # for `auto`


@dataclass
class Prepared:
    api: str  # "ollama" | "openai"
    model: str  # the name the client asked for
    request: Request
    stream: bool
    backend: Backend
    admission: Admission
    verdict: guard.Verdict
    arrived_ns: int
    request_id: str
    trace: Trace = field(default_factory=Trace)
    released: bool = False
    route: Route | None = None  # for `auto`: the tiers still to try

    @property
    def headers(self) -> dict[str, str]:
        return self.verdict.header()


class Gateway:
    """The parts that are features of their own (the `auto` router, the response cache, the
    guard's compaction) come in as arguments, each None when not configured; app.py builds them
    at start-up (`wire`)."""

    def __init__(
        self,
        settings: Settings,
        client: Client | None = None,
        own_url: str | None = None,
        *,
        router: Router | None = None,
        cache: ResponseCache | None = None,
        compactor: guard.Compactor | None = None,
    ):
        self.settings = settings
        self.own_url = own_url  # where this gateway listens: never a backend of itself
        self.client = client or Client(settings)
        gw = settings.gateway
        self.monitor = Monitor(max_samples=gw.monitor_samples, window_s=gw.monitor_seconds)
        self.metrics = GatewayMetrics(self.monitor, self.gauges)
        self.log = LogWriter(Store(settings.db_path)) if gw.log_requests else None
        self.upstreams: dict[str, UpstreamPool] = {}
        self.allowlist = Allowlist(settings, {u.model for u in gw.upstreams})
        self.router = router
        self.cache = cache
        self.compactor = compactor
        self._engines: dict[tuple[str, str, str | None], EngineBackend] = {}
        # (trusted, name) -> (expiry, backend): a name the router resolved is not thereby a client's to use
        self._resolved: dict[tuple[bool, str], tuple[float, Backend]] = {}
        self._admission: dict[str, Admission] = {}
        self._served_names: dict[str, str] = {}  # engine target -> the first name clients used (metric label)
        self._asked_as: dict[str, str] = {}  # engine target -> the name clients used most recently (/api/ps)
        self._remote_errors: dict[str, str] = {}  # backend identity -> why /api/ps could not ask it
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.cutoff = Cutoff()  # ends the answers in flight when a shutdown's grace runs out
        self.started_at = time.time()

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        gw = self.settings.gateway
        for spec in gw.upstreams:
            pool = UpstreamPool(
                spec,
                self._session,
                first_token_timeout=gw.first_token_timeout,
                cooldown=self.settings.resilience.breaker_reset,
            )
            if spec.tokenizer:
                pool.attach_tokenizer(self._engine_backend(spec.tokenizer))
            self.upstreams[spec.model] = pool
        loop = asyncio.get_running_loop()
        if self.upstreams:
            self._tasks.append(loop.create_task(self._health_loop()))
        self._tasks.append(loop.create_task(self._gauge_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.log is not None:
            await asyncio.to_thread(self.log.close)
        await asyncio.to_thread(self.client.close)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(p.check_health() for p in self.upstreams.values()), return_exceptions=True)
            await asyncio.sleep(self.settings.gateway.health_interval)

    async def _gauge_loop(self) -> None:
        while True:
            state = self.gauges()["models"]
            self.monitor.record_gauges(
                {m: g["queued"] for m, g in state.items()}, {m: g["in_flight"] for m, g in state.items()}
            )
            await asyncio.sleep(1.0)

    def gauges(self) -> dict[str, Any]:
        # Read from other threads (the dashboard, tests) while requests add models and errors:
        # iterate over copies, so a dict that grows meanwhile cannot break the read.
        remote_errors = dict(self._remote_errors)
        return {
            "models": {
                name: {"queued": a.queued, "in_flight": a.active, "limit": a.limit}
                for name, a in list(self._admission.items())
            },
            "upstreams": [node for pool in self.upstreams.values() for node in pool.status()]
            + [
                {
                    "model": b.ref.name,
                    "url": b.ref.url,
                    "kind": b.ref.engine,
                    "healthy": False,
                    "outstanding": 0,
                    "last_error": remote_errors[b.identity],
                }
                for b in list(self._engines.values())
                if b.identity in remote_errors
            ],
        }

    # --- model resolution ------------------------------------------------------------------------
    def _engine_backend(self, name: str) -> EngineBackend:
        ref = self.client.resolve(name)
        if ref.engine != "llamacpp" and self.own_url and ref.url and ref.url.rstrip("/").startswith(self.own_url):
            raise EngineUnavailableError(
                f"{name} would be served by {ref.url}, which is this gateway itself; set ollama_host in the "
                "config file or LMGAUGE_OLLAMA_HOST to the real Ollama server"
            )
        key = (ref.engine, ref.target, ref.url)
        if key not in self._engines:
            self._engines[key] = EngineBackend(self.client, ref)
        self._served_names.setdefault(ref.target, name)
        return self._engines[key]

    def backend(self, name: str, trusted: bool = False) -> Backend:
        """The backend for a model name. Names from clients must be on the allowlist
        (allowlist.py); `trusted` names come from server-side configuration (the router's tiers).
        May scan model folders: call it off the event loop unless the name is cached."""
        cached = self._resolved.get((trusted, name))
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        if not trusted:
            self.allowlist.check(name)
        current, seen = name, set()
        while current not in self.upstreams and current in self.settings.aliases and current not in seen:
            seen.add(current)
            current = self.settings.aliases[current]
        backend: Backend = self.upstreams[current] if current in self.upstreams else self._engine_backend(name)
        if len(self._resolved) > 1024:
            self._resolved.clear()
        self._resolved[(trusted, name)] = (now + RESOLVE_TTL_S, backend)
        return backend

    async def backend_for(self, name: str, trusted: bool = False) -> Backend:
        """`backend()` from the event loop: a cached name at once, else resolved on a thread."""
        cached = self._resolved.get((trusted, name))
        if cached and cached[0] > time.monotonic():
            return cached[1]
        return await asyncio.to_thread(self.backend, name, trusted)

    def _admission_for(self, backend: Backend) -> Admission:
        key = backend.name if isinstance(backend, UpstreamPool) else backend.ref.target
        admission = self._admission.get(key)
        if admission is None:
            label = backend.name if isinstance(backend, UpstreamPool) else self._served_names.get(key, key)
            admission = Admission(label, backend.concurrency, self.settings.gateway.max_queue)
            self._admission[key] = admission
        return admission

    def _asked(self, name: str, backend: Backend) -> None:
        """Remember the name a client used for an engine's model: /api/ps shows that one."""
        if isinstance(backend, EngineBackend):
            self._asked_as[backend.ref.target] = name

    def _label(self, backend: Backend) -> str:
        """The model label for metrics: one per backend, whatever alias the client used."""
        return self._admission_for(backend).name

    # --- a request -------------------------------------------------------------------------------
    async def prepare(self, api: str, request: Request, stream: bool) -> Prepared:
        arrived = time.perf_counter_ns()
        route: Route | None = None
        if request.model == "auto":
            try:
                route = await self._route(request)
            except asyncio.CancelledError:  # the client left while its request waited (disconnect.py)
                self._record(Outcome(api, request.model, arrived, "cancel"))
                raise
            except Exception as exc:
                self._record(Outcome(api, request.model, arrived, _status(exc), error=exc))
                raise
        attempt, backend, verdict, admission = await self._enter(api, request, route, arrived)
        # An id, not a secret: random's generator costs no system call, unlike uuid4.
        request_id = ("chatcmpl-" if isinstance(request, ChatRequest) else "cmpl-") + f"{random.getrandbits(96):024x}"
        return Prepared(
            api, request.model, attempt, stream, backend, admission, verdict, arrived, request_id, route=route
        )

    async def _route(self, request: Request) -> Route:
        if self.router is None:
            raise UnknownModelError("auto", hint=" (`auto` picks a model once [routing] tiers are configured)")
        # a classifier embeds the prompt (or asks a model): not on the event loop
        tiers, reason = await asyncio.to_thread(self.router.plan, request)
        return Route(request, list(tiers), reason)

    async def _enter(
        self, api: str, request: Request, route: Route | None, arrived: int
    ) -> tuple[Request, Backend, guard.Verdict, Admission]:
        """Resolve, guard and admit a request on its backend. For `auto`, on the current tier,
        moving up while a tier fails in a way a larger one may not (a prompt over its window, its
        engine down). Returns the request as it will run (the guard may have compacted it)."""
        while True:
            name = route.tier.model if route else request.model
            # each tier's guard starts from the client's request (a copy: compaction replaces messages)
            attempt = dataclasses.replace(route.request) if route else request
            backend: Backend | None = None
            try:
                backend = await self.backend_for(name, trusted=route is not None)  # router tiers are configuration
                window = backend.window(attempt.options)
                policy = guard.overflow_policy(self.settings)
                if window is None or isinstance(backend, UpstreamPool) and not backend.has_tokenizer:
                    verdict = guard.check(backend, attempt, window, policy, self.compactor)  # nothing to count
                else:  # tokenizing a long prompt takes a while: off the event loop, inside the deadline
                    verdict = await self._within_deadline(
                        arrived,
                        "counting the prompt's tokens",
                        asyncio.to_thread(guard.check, backend, attempt, window, policy, self.compactor),
                    )
                admission = self._admission_for(backend)
                self._asked(name, backend)
                await self._admit(admission)
            except asyncio.CancelledError:  # the client left while its request waited (disconnect.py)
                self._record(Outcome(api, request.model, arrived, "cancel", backend, route=route))
                raise
            except Exception as exc:
                if route is None or not self._escalates(route, exc):
                    self._record(Outcome(api, request.model, arrived, _status(exc), backend, error=exc, route=route))
                    raise
                self._left_behind(route, "error", f"error: {exc}")
                self._record(Outcome(api, request.model, arrived, "escalated", backend, error=exc, route=route))
                route.tiers.pop(0)
                continue
            if verdict.compacted:
                self.metrics.compactions.labels(self._label(backend)).inc()
            return attempt, backend, verdict, admission

    def _escalates(self, route: Route, error: BaseException) -> bool:
        """A larger tier is left and may answer after this error (a shutdown is not such an error)."""
        return (
            not route.last
            and self.router is not None
            and self.router.escalates(error)
            and not isinstance(error, ShuttingDownError)
            and not self.cutoff.cutting
        )

    def _left_behind(self, route: Route, status: str, why: str) -> None:
        """Note that the current tier's attempt is left behind: in the route and the metrics."""
        tier = route.tier
        route.attempts.append({"tier": tier.name, "model": tier.model, "status": status, "reason": why})
        self.metrics.escalations.labels(tier.name, status).inc()
        log.info("auto: %s (%s) %s: %s; trying %s", tier.name, tier.model, status, why, route.tiers[1].name)

    async def _next_tier(self, p: Prepared) -> None:
        """After an attempt was left behind (recorded, its slot released): the next tier, admitted."""
        assert p.route is not None
        p.route.tiers.pop(0)
        p.request, p.backend, p.verdict, p.admission = await self._enter(p.api, p.route.request, p.route, p.arrived_ns)
        p.trace, p.released = Trace(), False

    async def _within_deadline(self, arrived_ns: int, what: str, work: Any) -> Any:
        """Await `work` within what is left of the request's timeout (a worker thread keeps
        running after it, but the request is answered; limits.py bounds the work itself)."""
        timeout = self.settings.gateway.request_timeout
        left = timeout - (time.perf_counter_ns() - arrived_ns) / 1e9
        try:
            async with asyncio.timeout(max(left, 0.0)):
                return await work
        except TimeoutError:
            raise RequestTimeoutError(
                f"{what} took longer than the request timeout of {timeout:g}s (gateway.request_timeout)"
            ) from None

    async def _admit(self, admission: Admission) -> None:
        """Take a slot; a shutdown whose grace runs out ends the wait in the queue too."""
        if self.cutoff.cutting:
            raise ShuttingDownError("the gateway is shutting down")
        if admission.try_acquire():
            return  # a free slot: no wait to cut short
        waiting = asyncio.timeout(None)
        self.cutoff.timers.add(waiting)
        try:
            async with waiting:
                await admission.acquire(self.settings.gateway.request_timeout)
        except TimeoutError as exc:
            if isinstance(exc, LmgaugeError):
                raise  # the queue's own timeout
            log.warning(
                "shutdown: refused a request for %s still waiting in the queue (gateway.shutdown_grace %gs ran out)",
                admission.name,
                self.settings.gateway.shutdown_grace,
            )
            raise ShuttingDownError(
                f"{admission.name}: the gateway is shutting down and its grace period ran out "
                "while this request waited in the queue"
            ) from None
        finally:
            self.cutoff.timers.discard(waiting)

    def _release(self, p: Prepared) -> None:
        if not p.released:
            p.released = True
            p.admission.release()

    async def start_stream(self, p: Prepared) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks; the first is already here, so a failure before it raised."""
        chunks = self._run(p)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:  # pragma: no cover - _run always ends with a done chunk or raises
            raise EngineError("the backend produced nothing") from None
        return _prepend(first, chunks)

    async def complete(self, p: Prepared) -> Result:
        parts: list[str] = []
        async with contextlib.aclosing(self._run(p)) as chunks:
            async for chunk in chunks:
                if chunk.done:
                    result = chunk.result
                    assert result is not None, "a done chunk carries the result"
                    if parts:
                        result.content = "".join(parts)
                    return result
                parts.append(chunk.content)
        raise EngineError("the backend ended without a result")  # pragma: no cover

    async def _run(self, p: Prepared) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks. An `auto` attempt that a larger tier may replace is held back
        until it passes the router's check; on the last tier (or without routing) chunks flow live."""
        while p.route is not None and not p.route.last:
            try:
                async with contextlib.aclosing(self._attempt(p, hold=True)) as attempt:
                    held = [chunk async for chunk in attempt]
            except _Escalate:
                await self._next_tier(p)
                continue
            for chunk in held:
                yield chunk
            return
        # closed with this generator, so that a client hanging up releases the slot at once
        async with contextlib.aclosing(self._attempt(p, hold=False)) as attempt:
            async for chunk in attempt:
                yield chunk

    async def _attempt(self, p: Prepared, hold: bool) -> AsyncGenerator[Chunk, None]:
        """One backend's answer, timed, cached and recorded; `hold`: checked before it is final."""
        gw = self.settings.gateway
        loop = asyncio.get_running_loop()
        start = loop.time() - (time.perf_counter_ns() - p.arrived_ns) / 1e9
        total_deadline = start + gw.request_timeout
        # A pool times each node's first token itself, so that it can move on to the next node
        # within the request's deadline; a single engine's first token is timed here.
        first_timeout = None if isinstance(p.backend, UpstreamPool) else gw.first_token_timeout
        first_deadline = total_deadline if not first_timeout else start + first_timeout
        p.trace.deadline = total_deadline
        first_ns: int | None = None
        status, error, result = "cancel", None, None
        delivered = 0  # content chunks handed on: what an answer cut short did output
        cache_hit = False
        try:
            cached = (
                await _maybe_await(self.cache.get(p.backend.identity, p.request)) if self.cache is not None else None
            )
            if cached is not None:
                cache_hit = True
                chunks: AsyncGenerator[Chunk, None] = _replay(cached)
            else:
                chunks = p.backend.stream(p.request, p.stream, p.trace)
            try:
                while True:
                    deadline = total_deadline if first_ns is not None else min(first_deadline, total_deadline)
                    timer = asyncio.timeout_at(self.cutoff.limit(deadline))
                    self.cutoff.timers.add(timer)  # so that a shutdown past its grace can end this wait
                    try:
                        async with timer:
                            chunk = await chunks.__anext__()
                    except TimeoutError as exc:
                        if isinstance(exc, LmgaugeError):
                            raise  # the backend's own timeout (a pool's nodes), already worded
                        if self.cutoff.cutting:
                            log.warning(
                                "shutdown: cut the %s request %s for %s after %d chunks sent (gateway."
                                "shutdown_grace %gs ran out)",
                                p.api,
                                p.request_id,
                                p.model,
                                delivered,
                                gw.shutdown_grace,
                            )
                            raise ShuttingDownError(
                                f"{p.model}: the gateway is shutting down and its grace period "
                                f"({gw.shutdown_grace:g}s) ran out before this answer was "
                                "complete"
                            ) from None
                        if deadline == total_deadline:
                            what = "did not finish" if first_ns is not None else "did not start"
                            raise RequestTimeoutError(
                                f"{p.model}: the answer {what} within {gw.request_timeout:g}s (gateway.request_timeout)"
                            ) from None
                        raise RequestTimeoutError(
                            f"{p.model}: the first token did not come within "
                            f"{gw.first_token_timeout:g}s (gateway.first_token_timeout)"
                        ) from None
                    except StopAsyncIteration:
                        raise EngineError("the backend ended a stream without a result") from None
                    finally:
                        self.cutoff.timers.discard(timer)
                    if (chunk.content or chunk.thinking or chunk.tool_calls) and first_ns is None:
                        first_ns = time.perf_counter_ns()
                    if chunk.done:
                        result = chunk.result
                        assert result is not None, "a done chunk carries the result"
                        self._stamp(p, result, first_ns)
                        status = "ok"
                        why = self.router.check(p.request, result) if hold and self.router is not None else None
                        if why is not None and p.route is not None:
                            status = "escalated"
                            self._left_behind(p.route, "failed_check", why)
                            raise _Escalate(why)
                        if self.cache is not None and not cache_hit:
                            await _maybe_await(self.cache.put(p.backend.identity, p.request, result))
                    yield chunk
                    if chunk.done:
                        return
                    if chunk.content:
                        delivered += 1
            finally:
                await chunks.aclose()
        except (GeneratorExit, asyncio.CancelledError):
            if status != "ok":  # closed after its final chunk is a finished request, not a cancel
                status = "cancel"
            raise
        except _Escalate:
            raise
        except Exception as exc:
            status, error = _status(exc), exc
            if hold and p.route is not None and self._escalates(p.route, exc):
                status = "escalated"
                self._left_behind(p.route, "error", f"error: {exc}")
                raise _Escalate(str(exc)) from exc
            raise
        finally:
            self._release(p)
            self._record(
                Outcome(
                    p.api,
                    p.model,
                    p.arrived_ns,
                    status,
                    p.backend,
                    p,
                    error,
                    first_ns,
                    result,
                    cache_hit,
                    delivered,
                    p.route,
                )
            )

    def _stamp(self, p: Prepared, result: Result, first_ns: int | None) -> None:
        """Fill the durations a node did not report with the gateway's own measurements."""
        now = time.perf_counter_ns()
        t = result.timings
        t.sent_ns, t.first_token_ns, t.end_ns = p.arrived_ns, first_ns, now
        if t.total_ns is None:
            t.total_ns = now - p.arrived_ns
        if t.eval_ns is None and first_ns is not None:
            t.eval_ns = now - first_ns
        if t.prompt_eval_ns is None and first_ns is not None:
            t.prompt_eval_ns = first_ns - p.arrived_ns
        if not t.prompt_tokens and p.verdict.prompt_tokens:
            t.prompt_tokens = p.verdict.prompt_tokens
        result.model = p.model

    def _record(self, o: Outcome) -> None:
        api, model, backend, p, status, error = o.api, o.model, o.backend, o.prepared, o.status, o.error
        result, cache_hit = o.result, o.cache_hit
        t = result.timings if result is not None else None
        ttft = span_ms(o.arrived_ns, o.first_ns)
        e2e = span_ms(o.arrived_ns, time.perf_counter_ns())
        # An answer cut short has no final count from its engine: what it delivered, one token per
        # streamed chunk (as Ollama, OpenAI-compatible servers and the embedded engine stream them).
        output_tokens = t.output_tokens if t else o.delivered
        tpot = tpot_ms(ttft, e2e, output_tokens)
        verdict = p.verdict if p else None
        window = verdict.window if verdict else None
        prompt_tokens = t.prompt_tokens if t else verdict.prompt_tokens if verdict else None
        used = prompt_tokens / window if prompt_tokens and window else None
        if backend is not None:
            sample = Sample(
                model=self._label(backend),
                status=status,
                ttft_ms=ttft,
                tpot_ms=tpot,
                e2e_ms=e2e if status == "ok" else None,
                prompt_tokens=prompt_tokens or 0,
                output_tokens=output_tokens,
                cache_hit=cache_hit,
                context_used=used,
                speculation=t.speculation if t else None,
            )
            self.monitor.add(sample)
            self.metrics.observe(api, sample)
            if p is not None:
                for url in p.trace.failovers:
                    self.metrics.failovers.labels(sample.model, url).inc()
        else:
            self.metrics.requests.labels("-", api, status).inc()
        if self.log is None:
            return
        extra: dict[str, Any] = {"api": api}
        if window:
            extra["window"] = window
        if p is not None:
            extra["stream"] = p.stream
            if p.trace.failovers:
                extra["failed_over"] = p.trace.failovers
        if o.route is not None:
            extra["route"] = o.route.log_entry()
        if error is not None:
            extra["http_status"] = getattr(error, "http_status", 500)
        self.log.put(
            RequestRecord(
                model=model,
                source="gateway",
                status=status,
                engine=(result.engine if result else backend.kind if backend is not None else None),
                error=str(error) if error is not None else None,
                done_reason=result.done_reason if result else None,
                prompt_tokens=prompt_tokens,
                cached_tokens=t.cached_tokens if t else None,
                output_tokens=output_tokens,
                ttft_ms=ttft,
                tpot_ms=tpot,
                e2e_ms=e2e,
                prefill_tps=t.prefill_tps if t else None,
                decode_tps=t.decode_tps if t else None,
                load_ms=t.load_ns / 1e6 if t else None,
                upstream=p.trace.upstream if p else None,
                cache_hit=cache_hit,
                compacted=bool(verdict and verdict.compacted),
                extra=extra,
            )
        )

    # --- the rest of the API ---------------------------------------------------------------------
    async def load_or_unload(self, name: str, keep_alive: float | None, options: Options) -> str | None:
        backend = await self.backend_for(name)
        if keep_alive == 0:
            await backend.unload()
            return "unload"
        self._asked(name, backend)
        await backend.load(options, keep_alive)
        return None

    async def embed(
        self, name: str, inputs: list[str], truncate: bool = True, dimensions: int | None = None
    ) -> Embeddings:
        if dimensions is not None and dimensions < 1:
            raise InvalidOptionError("dimensions must be at least 1")
        if any(not text for text in inputs):
            raise InvalidOptionError("input must not be empty (nor contain empty strings)")
        arrived = time.perf_counter_ns()
        backend = await self.backend_for(name)  # an unknown or refused model fails here, input or not
        if not inputs:
            return Embeddings(name, [])
        admission = self._admission_for(backend)
        await admission.acquire(self.settings.gateway.request_timeout)
        try:
            emb: Embeddings = await self._within_deadline(arrived, "embedding", backend.embed(inputs))
        finally:
            admission.release()
        if dimensions is not None:  # Matryoshka-style: keep the first N, renormalise
            cut = []
            for v in emb.vectors:
                head = v[:dimensions]
                norm = math.sqrt(sum(x * x for x in head)) or 1.0
                cut.append([x / norm for x in head])
            emb.vectors = cut
        emb.model = name
        return emb

    async def list_models(self) -> list[dict[str, Any]]:
        """/api/tags: local models, aliases and upstream models."""
        infos = await asyncio.to_thread(self.client.list_models)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for info in infos:
            entry = _tag_entry(info.name, info.path, info.size_bytes)
            out.append(entry)
            seen.add(info.name)
        for alias in self.settings.aliases:
            if alias not in seen:
                out.append(
                    {
                        "name": alias,
                        "model": alias,
                        "modified_at": _iso(self.started_at),
                        "size": 0,
                        "digest": _digest(alias),
                        "details": {
                            "format": "",
                            "family": "",
                            "families": [],
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                )
                seen.add(alias)
        for name, pool in self.upstreams.items():
            if name not in seen:
                out.append(
                    {
                        "name": name,
                        "model": name,
                        "modified_at": _iso(self.started_at),
                        "size": 0,
                        "digest": _digest(name),
                        "remote_host": pool.nodes[0].url,
                        "remote_model": pool.target,
                        "details": {
                            "format": "",
                            "family": "",
                            "families": [],
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                )
        return out

    async def show(self, name: str) -> dict[str, Any]:
        backend = await self.backend_for(name)
        if isinstance(backend, UpstreamPool):
            shown = await backend.show()
            return shown or {
                "details": {"format": "", "family": "", "families": []},
                "model_info": {},
                "capabilities": ["completion"],
                "parameters": "",
                "template": "",
                "modified_at": _iso(self.started_at),
            }
        info = await asyncio.to_thread(self.client.show, name)
        return _show_entry(info)

    async def running(self) -> list[dict[str, Any]]:
        """/api/ps: one row per loaded model file, under the name a client used for it last.

        Several backends share one engine (every embedded model runs in the same llama.cpp
        engine), so each engine is asked once; a file loaded twice (two windows, one of them busy)
        is one row with both instances' memory and the larger window. A remote engine that cannot
        be asked (its server down or slow) is left out and marked unhealthy in the stats."""
        engines = {id(b.engine): b for b in list(self._engines.values())}
        files: dict[str, list[Any]] = {}
        for backend in engines.values():
            try:
                async with asyncio.timeout(PS_TIMEOUT_S):
                    loaded = await asyncio.to_thread(backend.engine.loaded)
                self._remote_errors.pop(backend.identity, None)
            except (LmgaugeError, OSError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if backend.identity not in self._remote_errors:
                    log.warning("%s (%s) did not say what it has loaded: %s", backend.ref.url, backend.ref.engine, why)
                self._remote_errors[backend.identity] = why
                continue
            for m in loaded:
                if not m.details.get("embedding"):
                    files.setdefault(m.path or m.name, []).append(m)
        out = []
        for loaded in files.values():
            first = loaded[0]
            name = self._asked_as.get(first.name) or self._served_names.get(first.name, first.name)
            size = sum(m.size_bytes or 0 for m in loaded)
            expires = [m.expires_at for m in loaded if m.expires_at]
            entry = _tag_entry(name, first.path, size)
            entry.update(
                size=size,
                size_vram=0,
                context_length=max(m.context_length or 0 for m in loaded),
                expires_at=_iso(max(expires)) if len(expires) == len(loaded) else "0001-01-01T00:00:00Z",
            )
            entry.pop("modified_at", None)
            out.append(entry)
        return out

    def stats(self, samples: int = 500) -> dict[str, Any]:
        """/api/lmgauge/stats: what the dashboard and `lmgauge monitor` show."""
        state = self.gauges()
        recent = self.monitor.samples()[-samples:]
        return {
            "window_s": self.monitor.window_s,
            "max_samples": self.monitor.max_samples,
            "uptime_s": time.time() - self.started_at,
            "models": {m: s.to_dict() for m, s in self.monitor.snapshot().items()},
            "gauges": state["models"],
            "upstreams": state["upstreams"],
            "timeline": self.monitor.timeline(bucket_s=2.0),
            "samples": [{k: getattr(s, k) for k in Sample.__slots__} for s in recent],
            # What a crash (kill -9) could lose: rows are at most max_age_ms old when committed.
            "request_log": None
            if self.log is None
            else {
                "written": self.log.written,
                "max_age_ms": round(self.log.max_age_s * 1000, 2),
                "age_p99_ms": round((percentile(list(self.log.ages), 99) or 0.0) * 1000, 2),
                "batches": len(self.log.ages),
                "lag_ms": round(self.log.lag_s * 1000, 2),
                "linger_ms": self.log.linger_s * 1000,
            },
        }


async def _maybe_await(value: Any) -> Any:
    """Cache hooks may be plain functions (an in-process lookup) or coroutines (a network store)."""
    return await value if inspect.isawaitable(value) else value


async def _prepend(first: Chunk, rest: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    try:
        yield first
        if first.done:
            return
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


async def _replay(result: Result) -> AsyncGenerator[Chunk, None]:
    if result.content:
        yield Chunk(content=result.content)
    yield Chunk(done=True, result=result)


def _status(exc: BaseException) -> str:
    if isinstance(exc, ContextOverflowError):
        return "overflow"
    if isinstance(exc, EngineBusyError):
        return "busy"
    if isinstance(exc, RequestTimeoutError):
        return "timeout"
    if isinstance(exc, LmgaugeError) and 400 <= exc.http_status < 500:
        return "invalid"
    return "error"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _digest(text: str) -> str:
    """An identity for a model entry (not a hash of the file's bytes, which would mean reading it)."""
    return hashlib.sha256(text.encode()).hexdigest()


def _gguf_details(path: str | None) -> dict[str, Any]:
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": "",
    }
    if not path:
        return details
    try:
        from ..models import inspect_gguf

        info = inspect_gguf(path)
    except (LmgaugeError, OSError):
        return details
    n = info.parameters
    size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    details.update(
        family=info.architecture,
        families=[info.architecture],
        parameter_size=size,
        quantization_level=info.quantization,
    )
    return details


def _tag_entry(name: str, path: str | None, size: int | None) -> dict[str, Any]:
    import os

    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    modified = _iso(stat.st_mtime) if stat else _iso(time.time())
    ident = f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else name
    return {
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": size or 0,
        "digest": _digest(ident),
        "details": _gguf_details(path),
    }


def _show_entry(info: Any) -> dict[str, Any]:
    d = dict(info.details)
    template = d.pop("template", "")
    arch = d.get("architecture", "")
    model_info = {
        "general.architecture": arch,
        "general.parameter_count": d.get("parameters"),
        "general.name": d.get("name"),
    }
    for key, gguf_key in (
        ("n_ctx_train", "context_length"),
        ("n_embd", "embedding_length"),
        ("n_layer", "block_count"),
        ("n_head", "attention.head_count"),
        ("n_head_kv", "attention.head_count_kv"),
    ):
        if d.get(key) is not None:
            model_info[f"{arch}.{gguf_key}"] = d[key]
    # The embedded engine calls tools with any template (a generic JSON syntax where the template
    # knows none) and thinks where the template has a <think> section (engines/thinking.py).
    capabilities = ["completion", "tools"]
    if isinstance(template, str) and ("<think>" in template or "enable_thinking" in template):
        capabilities.append("thinking")
    details = _gguf_details(info.path)
    return {
        "license": "",
        "modelfile": f"# lmgauge: {info.source}\nFROM {info.path}\n",
        "parameters": "",
        "template": template if isinstance(template, str) else "",
        "details": details,
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": _tag_entry(info.name, info.path, info.size_bytes)["modified_at"],
    }
