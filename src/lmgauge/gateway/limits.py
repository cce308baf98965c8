"""Admission before expensive work: a request is measured by cheap means before it costs CPU.

Rendering a chat template and tokenizing for the context guard cost time in proportion to the
request (100k one-word messages took minutes of CPU before these caps), so a request is refused
with a 400 when it is bigger than any honest request to a local model needs to be -- before the
wire format is converted, before anything is tokenized:

    max_body_bytes     the body (4 MiB by default; http.read_json counts while reading)
    max_messages       messages in one chat request
    max_embed_inputs   inputs in one embedding request
    max_prompt_chars   characters of text across a request's messages / prompt / inputs

and a client must send its headers within `header_timeout` and its body within `body_timeout`
seconds, so a slow-loris client cannot hold connections open forever. The settings are in
`[gateway]` (config.py); the context guard itself runs inside the request's deadline (core.py).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import GatewaySettings
from ..errors import InvalidOptionError


class Limits:
    """The caps, checked on a parsed body (http.read_json calls `check`)."""

    def __init__(self, gw: GatewaySettings):
        self.max_messages = gw.max_messages
        self.max_inputs = gw.max_embed_inputs
        self.max_chars = gw.max_prompt_chars
        self.body_timeout = gw.body_timeout

    def check(self, body: dict[str, Any], size: int) -> None:
        messages = body.get("messages")
        if isinstance(messages, list) and len(messages) > self.max_messages:
            raise InvalidOptionError(
                f"messages has {len(messages)} entries; the limit is {self.max_messages} (gateway.max_messages)"
            )
        inputs = body.get("input")
        if isinstance(inputs, list) and len(inputs) > self.max_inputs:
            raise InvalidOptionError(
                f"input has {len(inputs)} entries; the limit is {self.max_inputs} (gateway.max_embed_inputs)"
            )
        if size > self.max_chars:  # a body this small cannot hold more characters of text
            chars = text_chars(body)
            if chars > self.max_chars:
                raise InvalidOptionError(
                    f"the request has {chars} characters of text; the limit is "
                    f"{self.max_chars} (gateway.max_prompt_chars)"
                )


def text_chars(body: dict[str, Any]) -> int:
    """Characters of the text a model would read: prompt, system, suffix, input(s), messages."""
    total = 0
    for name in ("prompt", "system", "suffix", "input"):
        value = body.get(name)
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            total += sum(len(v) for v in value if isinstance(v, str))
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers: uvicorn's own
    keep-alive timer is reset by every byte, so a client trickling a header byte at a time
    (slow loris) would hold its connection forever."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def http_protocol(gw: GatewaySettings) -> Any:
    """What `uvicorn.Config(http=...)` takes: the header-deadline protocol."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=gw.header_timeout)
