"""Admission control: at most `limit` requests of a model run at once, at most `max_queue` wait.

A full queue answers at once with 503 + Retry-After (what Ollama calls "server busy"), so a
client backs off instead of piling up; a waiting request keeps its place in FIFO order. For the
embedded engine the limit is its batch size (`settings.parallel`), so the gateway never queues
work inside the engine where it could not be measured or refused.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import EngineBusyError, RequestTimeoutError


class Admission:
    def __init__(self, name: str, limit: int, max_queue: int):
        self.name = name
        self.limit = max(limit, 1)
        self.max_queue = max_queue
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot now if there is one and nobody waits for it (no timer, no future)."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self, timeout: float | None = None) -> None:
        """Take a slot, waiting in line if needed; EngineBusyError when the line is full."""
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queue:
            raise EngineBusyError(
                f"server busy: {self.name} has {self.active} requests running and {len(self._waiters)} "
                "waiting (gateway.max_queue / OLLAMA_MAX_QUEUE); retry later"
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter  # release() hands its slot over by resolving this future
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we gave up: pass it on
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise RequestTimeoutError(f"waited {timeout:.0f}s in {self.name}'s queue without a free slot") from None
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next in line; `active` is unchanged
                return
        self.active -= 1
