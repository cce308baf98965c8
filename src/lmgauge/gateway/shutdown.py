"""Stopping with answers still in flight: finish them within the grace period, then end each one
properly.

On SIGTERM / Ctrl-C uvicorn stops accepting connections and waits `shutdown_grace` seconds for
the open ones to finish. Left to itself it then cancels whatever is still running: a stream
stops mid-body (the client sees an incomplete chunked read, not an error) and every cut request
prints a traceback. Instead, when the grace period runs out the gateway ends each answer still
in flight itself: its wait for the next chunk (core.py) is cut short and becomes a
`ShuttingDownError` (errors.py), which a stream sends as its final error event and a request not yet
answered gets as a 503; the request is logged once, as one line. uvicorn's own deadline is set
a little later (`MARGIN_S`), so that those last events are written before it would cancel.
"""

from __future__ import annotations

import asyncio
from typing import Any

MARGIN_S = 3.0  # after the grace period: time for the cut answers to send their last event


class Cutoff:
    """The waits of the answers in flight, so that they can all be ended at once.

    core.py registers the `asyncio.Timeout` of each wait for a chunk in `timers` while it waits
    (a set add and discard per chunk); `cut()` reschedules them all to now, and `limit()` makes
    every wait that starts afterwards end at once too."""

    def __init__(self) -> None:
        self.timers: set[asyncio.Timeout] = set()
        self.cut_at: float | None = None  # the event loop's clock

    @property
    def cutting(self) -> bool:
        return self.cut_at is not None

    def limit(self, deadline: float) -> float:
        return deadline if self.cut_at is None else min(deadline, self.cut_at)

    def cut(self) -> None:
        now = asyncio.get_running_loop().time()
        self.cut_at = now
        for timer in list(self.timers):
            try:
                timer.reschedule(now)
            except RuntimeError:  # already expired or left: nothing to cut
                pass


def graceful_server(config: Any, cutoff: Cutoff, grace: float) -> Any:
    """A uvicorn Server that cuts the answers in flight when `grace` seconds of its shutdown have
    passed; `config.timeout_graceful_shutdown` should be grace + MARGIN_S."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            asyncio.get_running_loop().call_later(grace, cutoff.cut)
            await super().shutdown(sockets)

    return GracefulServer(config)
