"""Stop a request's work when its client hangs up before the answer is sent.

A streamed answer notices a vanished client at its next write (Starlette listens for the
disconnect while streaming). Everything before the first byte does not: the wait in the
admission queue, the wait for a first token, and the whole of a non-streamed answer. Without
this, a client that gave up still holds an admission slot and keeps the node (or the embedded
engine's slot) generating to the end, and fire-and-disconnect fills every slot for free.

`until_disconnected(request, work)` runs `work` while listening on the ASGI channel for
`http.disconnect`; if the client goes first, the work is cancelled (core.py records it as
"cancel", gives back the slot and closes the upstream connection or the engine's stream) and
`ClientGoneError` is raised for the handler to answer into the void.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from starlette.requests import Request

from ..errors import ClientGoneError

T = TypeVar("T")


async def _disconnected(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    """Returns when the server reports the client gone. The body has been read already, so the
    only message left to come is the disconnect (or, once the response is sent, nothing)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


# A request answered within this many seconds never starts a watcher: most answers from a fast
# upstream or a cache hit take a millisecond, and a task per request is a measurable share of the
# gateway's CPU (benchmarks/gateway_overhead.py). A client that leaves is noticed this much later.
WATCH_AFTER_S = 0.05


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work` in this task, cancelling it if the client disconnects first (one watcher
    task, started only if the work is still running after WATCH_AFTER_S; no second task for the
    work: the work's own try/finally gives back what it holds)."""
    task = asyncio.current_task()
    assert task is not None
    gone = finished = False
    watcher: asyncio.Future[None] | None = None

    def hung_up(done: asyncio.Future[None]) -> None:
        nonlocal gone
        if finished or done.cancelled() or done.exception() is not None:
            return
        gone = True
        task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_disconnected(request.receive))
        watcher.add_done_callback(hung_up)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:  # our own cancel, nobody else's: the client left
            raise ClientGoneError("the client closed the connection before the answer was ready") from None
        raise
    finally:
        finished = True  # a callback already scheduled must not cancel what the task does next
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
