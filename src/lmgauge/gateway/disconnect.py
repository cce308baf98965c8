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
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from ..errors import LmgaugeError

T = TypeVar("T")


class ClientGoneError(LmgaugeError):
    """The client closed the connection before its answer was ready."""

    http_status = 499  # nginx's "client closed request": nobody reads it, logs and tests may


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Returns when the server reports the client gone. The body has been read already, so the
    only message left to come is the disconnect (or, once the response is sent, nothing)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    # The work's task is created first, so its first step runs before the watcher's: by the time
    # a disconnect can cancel it, it is inside core.py's try/finally that gives back its slot
    # (a task cancelled before its first step would never run its own cleanup).
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is being cancelled
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task  # let it record itself and give back what it held
    raise ClientGoneError("the client closed the connection before the answer was ready")
