"""Keep answering when a model or its server misbehaves: timeouts, retries, circuit breakers and
fallback chains around any Client call, shared by the CLI, batch jobs, the router and the gateway.

    lm = ResilientClient(Client())              # policy from [resilience] in the config
    lm.chat("big", messages)                     # same API as Client

What it does, per call:

- **Timeouts.** The engine's stream is pumped by a worker thread, so the caller waits on a
  queue with a deadline it controls: `first_token_timeout` from sending to the first chunk,
  `total_timeout` for the whole answer. A server that hangs, before or mid-stream, becomes an
  `UpstreamTimeoutError` on time, whatever the engine's own socket timeouts are. Connecting
  is bounded in the remote engines' HTTP clients by `connect_timeout` (a refused or unreachable
  server fails fast, and is retried like any unavailable upstream).
- **Retries** on retryable errors only (server unreachable or dropped the connection, busy
  429/503, 5xx, a timeout), with exponential backoff and jitter. A bad request, an unknown model
  or a prompt over the window fail at once: retrying cannot fix them.
- **A circuit breaker per model and upstream**: after `breaker_failures` consecutive failures
  it opens and calls fail fast for `breaker_reset` seconds, then one trial call goes through
  (half-open); success closes it, failure opens it again.
- **Fallbacks**: `[resilience.fallbacks] big = ["medium", "smollm2"]`: when a model's attempts
  are used up or its breaker is open, the next model in its chain answers.

A stream that already showed text is never retried behind the caller's back (the text would be
repeated): a failure mid-stream becomes one clean error. `chat()` and `generate()` collect the
whole answer first, so they can retry even then.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from .config import ResilienceSettings
from .engines.base import collect
from .errors import (
    CircuitOpenError,
    EngineBusyError,
    EngineError,
    EngineUnavailableError,
    LmgaugeError,
    UpstreamTimeoutError,
)
from .types import Chunk, Result

log = logging.getLogger("lmgauge.resilience")


RETRYABLE: tuple[type[LmgaugeError], ...] = (EngineUnavailableError, EngineBusyError, EngineError)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE)


# --- circuit breaker --------------------------------------------------------------------------------


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (reset seconds) -> half-open: one trial call
    -> closed on success, open again on failure."""

    def __init__(self, failures: int = 3, reset_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.failures_to_open = failures
        self.reset_s = reset_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def retry_in(self) -> float:
        """Seconds until a trial call is allowed (0 when it is allowed now)."""
        with self._lock:
            if self.opened_at is None:
                return 0.0
            return max(0.0, self.reset_s - (self.clock() - self.opened_at))

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one trial call at a time may."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self.trial_in_flight:
                self.trial_in_flight = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self.trial_in_flight = False

    def failure(self) -> bool:
        """Record a failure; True when this one opened (or re-opened) the circuit."""
        with self._lock:
            self.failures += 1
            was_trial = self.trial_in_flight
            self.trial_in_flight = False
            if was_trial or (self.opened_at is None and self.failures >= self.failures_to_open):
                self.opened_at = self.clock()
                return True
            return False

    def release(self) -> None:
        """A call ended with neither success nor failure of the upstream (e.g. a bad request)."""
        with self._lock:
            self.trial_in_flight = False


# --- timeouts -----------------------------------------------------------------------------------------


def guarded_stream(
    start: Callable[[], Iterator[Chunk]], first_token_s: float, total_s: float, what: str
) -> Generator[Chunk, None, None]:
    """Run `start()`'s stream in a worker thread and pass its chunks on, raising
    UpstreamTimeoutError when the first chunk or the end does not come in time.

    On timeout or when the caller stops early, the worker closes the engine's stream at its next
    chunk (which cancels the request); a call blocked inside the engine stays with the daemon
    worker until the engine's own socket timeout frees it, never with the caller."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def pump() -> None:
        stream = None
        try:
            stream = start()
            for chunk in stream:
                events.put(("chunk", chunk))
                if stop.is_set() or chunk.done:
                    break
            else:
                events.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            events.put(("error", exc))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a broken stream may fail again
                    log.debug("closing the stream of %s failed", what, exc_info=True)

    worker = threading.Thread(target=pump, name=f"lmgauge-guard-{what}", daemon=True)
    t0 = time.monotonic()
    worker.start()
    started = False
    try:
        while True:
            now = time.monotonic()
            deadline = t0 + total_s
            limit = f"total_timeout of {total_s:g} s"
            if not started and t0 + first_token_s < deadline:
                deadline, limit = t0 + first_token_s, f"first_token_timeout of {first_token_s:g} s"
            try:
                kind, value = events.get(timeout=max(deadline - now, 0.0))
            except queue.Empty:
                state = "stopped mid-answer" if started else "did not start answering"
                raise UpstreamTimeoutError(f"{what} {state} within the {limit} ([resilience] in the config)") from None
            if kind == "error":
                raise value
            if kind == "end":
                raise EngineError(f"{what} ended its stream without a final chunk")
            started = True
            yield value
            if value.done:
                return
    finally:
        stop.set()


# --- the client wrapper ----------------------------------------------------------------------------


@dataclass
class ResilienceEvent:
    """What happened, for logs and monitors: retry, timeout, breaker_open, breaker_rejected, fallback."""

    kind: str
    model: str
    detail: str


class ResilientClient:
    """A Client with timeouts, retries, breakers and fallbacks; the same calling conventions."""

    def __init__(
        self,
        client: Any,
        policy: ResilienceSettings | None = None,
        *,
        listener: Callable[[ResilienceEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.client = client
        self.policy = policy or client.settings.resilience
        self.listener = listener
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    @property
    def settings(self) -> Any:
        return self.client.settings

    # --- breakers ------------------------------------------------------------------------------------
    def upstream_key(self, model: str) -> str:
        """One breaker per model per upstream: the same tag on two servers fails independently."""
        ref = self.client.resolve(model)
        return f"{ref.engine}|{ref.url or ''}|{ref.target}"

    def breaker(self, model: str) -> CircuitBreaker:
        key = self.upstream_key(model)
        with self._lock:
            if key not in self._breakers:
                self._breakers[key] = CircuitBreaker(self.policy.breaker_failures, self.policy.breaker_reset)
            return self._breakers[key]

    def breaker_states(self) -> dict[str, str]:
        with self._lock:
            return {key: b.state for key, b in self._breakers.items()}

    def _emit(self, kind: str, model: str, detail: str) -> None:
        log.warning("%s: %s %s", kind, model, detail)
        if self.listener is not None:
            self.listener(ResilienceEvent(kind, model, detail))

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half the step fixed, half random, so retries
        from many clients spread out but none retries immediately."""
        step = min(self.policy.backoff_max, self.policy.backoff * (2**attempt))
        return step / 2 + self.rng.uniform(0, step / 2)

    # --- the core loop --------------------------------------------------------------------------------
    def _run(self, model: str | None, start: Callable[[str], Iterator[Chunk]], live: bool) -> Iterator[Chunk]:
        """Try `model`, then its fallbacks; each with retries behind its breaker. `live`: chunks go
        to the caller as they come (so a stream that showed text cannot be retried)."""
        name = model or self.client.settings.default_model
        chain = [name] + [m for m in self.policy.fallbacks.get(name, []) if m != name]
        failures: list[str] = []
        last_exc: LmgaugeError | None = None
        for position, current in enumerate(chain):
            if position:
                self._emit("fallback", current, f"after {chain[position - 1]} failed")
            breaker = self.breaker(current)
            for attempt in range(self.policy.retries + 1):
                if not breaker.allow():
                    wait = breaker.retry_in()
                    last_exc = CircuitOpenError(
                        f"{current} failed {self.policy.breaker_failures} times in a row; its circuit is "
                        f"open for another {wait:.1f} s"
                    )
                    self._emit("breaker_rejected", current, str(last_exc))
                    break
                shown = 0
                chunks = guarded_stream(
                    functools.partial(start, current),
                    self.policy.first_token_timeout,
                    self.policy.total_timeout,
                    current,
                )
                try:
                    held: list[Chunk] = []
                    for chunk in chunks:
                        if chunk.done:  # before yielding it: a caller may stop reading at the last chunk
                            breaker.success()
                        if live:
                            if chunk.content:
                                shown += 1
                            yield chunk
                        else:
                            held.append(chunk)
                    yield from held
                    return
                except LmgaugeError as exc:
                    if not is_retryable(exc):
                        breaker.release()
                        raise
                    if isinstance(exc, UpstreamTimeoutError):
                        self._emit("timeout", current, str(exc))
                    if breaker.failure():
                        self._emit("breaker_open", current, f"after {breaker.failures} failures: {exc}")
                    last_exc = exc
                    if shown:
                        raise type(exc)(
                            f"{current} failed after {shown} chunks of its answer were sent: {exc}"
                        ) from exc
                    if attempt < self.policy.retries and breaker.state == "closed":
                        delay = self.backoff(attempt)
                        self._emit("retry", current, f"attempt {attempt + 2} in {delay:.2f} s after: {exc}")
                        self.sleep(delay)
                        continue
                    break
                except BaseException:  # a bug below us, or the caller stopped reading: not the upstream's fault
                    breaker.release()
                    raise
                finally:
                    chunks.close()
            failures.append(f"{current}: {last_exc}")
        assert last_exc is not None
        if len(chain) == 1:
            raise last_exc
        raise type(last_exc)(f"every model in the fallback chain failed ({'; '.join(failures)})") from last_exc

    # --- the Client's API ------------------------------------------------------------------------------
    def chat_stream(self, model: str | None, messages: Any, **kwargs: Any) -> Iterator[Chunk]:
        return self._run(model, lambda m: self.client.chat_stream(m, messages, **kwargs), live=True)

    def chat(self, model: str | None, messages: Any, **kwargs: Any) -> Result:
        return collect(self._run(model, lambda m: self.client.chat_stream(m, messages, **kwargs), live=False))

    def generate_stream(self, model: str | None, prompt: str, **kwargs: Any) -> Iterator[Chunk]:
        return self._run(model, lambda m: self.client.generate_stream(m, prompt, **kwargs), live=True)

    def generate(self, model: str | None, prompt: str, **kwargs: Any) -> Result:
        return collect(self._run(model, lambda m: self.client.generate_stream(m, prompt, **kwargs), live=False))

    def embed(self, model: str | None, inputs: str | list[str]) -> Any:
        return self.client.embed(model, inputs)

    def resolve(self, model: str | None) -> Any:
        return self.client.resolve(model)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ResilientClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
