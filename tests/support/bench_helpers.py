"""A Client over scripted engines, for bench/load tests that need no model.

Benchmarks take a Client; this one resolves every name to a ScriptedEngine picked by model name,
so the runner, the load generator and the reports run their real code over canned streams.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from lmgauge.client import Client
from lmgauge.config import Settings
from lmgauge.models import ModelRef
from lmgauge.types import ChatRequest, Chunk
from support.scripted import ScriptedEngine


class ScriptedClient(Client):
    def __init__(self, engines: dict[str, ScriptedEngine], settings: Settings | None = None):
        super().__init__(settings or Settings())
        self.engines = engines

    def resolve(self, model: str | None) -> ModelRef:
        from lmgauge.errors import UnknownModelError

        if model not in self.engines:
            raise UnknownModelError(str(model), list(self.engines))
        return ModelRef(name=model, engine="scripted", target=model, source="script")

    def engine(self, ref: ModelRef) -> ScriptedEngine:
        return self.engines[ref.target]


class FlakyEngine(ScriptedEngine):
    """Fails requests number `fail_on` (0-based, counting every chat request it gets)."""

    def __init__(self, *args, fail_on: set[int] = frozenset(), interrupt_on: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_on = set(fail_on)
        self.interrupt_on = interrupt_on
        self.calls = 0
        self._lock = threading.Lock()

    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        with self._lock:
            index = self.calls
            self.calls += 1
        if index == self.interrupt_on:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during this request
        if index in self.fail_on:
            from lmgauge.errors import EngineError

            def failing() -> Iterator[Chunk]:
                yield Chunk(content="partial")
                raise EngineError("scripted mid-stream failure")

            self.requests.append(request)
            return failing()
        return super().chat(request)


class ConcurrencyProbe(ScriptedEngine):
    """Counts how many of its streams are open at once (the load generator's real concurrency).

    `hold_until=N`: the first streams wait before their first token until N are open at once
    (at most `hold_limit_s`), then the gate stays open. So a test sees the full concurrency
    however late the machine starts a worker thread, and a generator that never has N in flight
    costs one wait, not one per request."""

    def __init__(self, *args, hold_until: int | None = None, hold_limit_s: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_until = hold_until
        self.hold_limit_s = hold_limit_s
        self._gate_open = hold_until is None
        self._lock = threading.Condition()

    def reset(self) -> None:
        self.max_in_flight = 0

    def chat(self, request: ChatRequest) -> Iterator[Chunk]:
        inner = super().chat(request)

        def probed() -> Iterator[Chunk]:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                if not self._gate_open:
                    self._lock.notify_all()
                    self._lock.wait_for(
                        lambda: self._gate_open or self.in_flight >= (self.hold_until or 0), self.hold_limit_s
                    )
                    self._gate_open = True
                    self._lock.notify_all()
            try:
                yield from inner
            finally:
                with self._lock:
                    self.in_flight -= 1

        return probed()
