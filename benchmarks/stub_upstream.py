"""The gateway benchmarks' upstream: Ollama's /api/chat, /api/generate, /api/embed, /api/version
and OpenAI's /v1/chat/completions, /v1/completions, /v1/models, as a bare ASGI app on uvloop and
httptools. Tests use tests/support/standins.py (complete, checked against Ollama's docs); this exists
because the benchmarks need the cheapest possible upstream: on a 2-core machine the upstream's
CPU competes with the gateway's, and the figure must be the gateway's.

Fault knobs, changeable while it runs: `fault` = None | "500" | "hang" | "drop" (close the
connection after `drop_after` chunks) | "refuse-stream" (500 only for streaming requests);
`delay_s` before the first byte; `token_delay_s` between chunks. `requests` counts calls.

    stub = StubUpstream(tokens=5).start()     # uvicorn on a free 127.0.0.1 port, in a thread
    stub.url                                  # http://127.0.0.1:PORT
    stub.fault = "drop"
    stub.stop()

Run as a script for benchmarks: `python benchmarks/stub_upstream.py --port 9000`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from _common import free_port  # benchmarks/ is on sys.path: this file is a script or imported by one

WORDS = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", " of", " sunlight", "."]


class StubUpstream:
    def __init__(self, tokens: int = 8, port: int | None = None):
        self.tokens = tokens
        self.port = port or free_port()
        self.fault: str | None = None
        self.drop_after = 2
        self.delay_s = 0.0
        self.token_delay_s = 0.0
        self.requests = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- running -------------------------------------------------------------------------------
    def start(self) -> StubUpstream:
        import uvicorn

        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="off",
            access_log=False,
            loop="asyncio",
            http="h11",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("stub upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            self._thread.join(5)

    # --- the app -------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        path = scope["path"]
        if path in ("/api/version", "/"):
            await _json(send, {"version": "0.12.6"})
            return
        if path in ("/v1/models", "/models"):
            await _json(send, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
            return
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            await _json(send, {"error": "invalid JSON"}, 400)
            return
        stream = req.get("stream", not path.startswith("/v1/"))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fault == "hang":  # until the client gives up (the body is read: only a disconnect comes)
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if self.fault == "500" or self.fault == "refuse-stream" and stream:
            await _json(send, {"error": "stub failure"}, 500)
            return
        if req.get("model") not in ("stub", None):
            await _json(send, {"error": f'model "{req.get("model")}" not found, try pulling it first'}, 404)
            return
        n = min(int((req.get("options") or {}).get("num_predict") or req.get("max_tokens") or self.tokens), self.tokens)
        n = max(n, 1)
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        if path == "/api/embed":
            inputs = req.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            await _json(send, {"model": "stub", "embeddings": [[0.6, 0.8] for _ in inputs], "prompt_eval_count": 3})
            return
        if path in ("/v1/embeddings", "/embeddings"):
            inputs = req.get("input")
            inputs = [inputs] if isinstance(inputs, str) else inputs
            await _json(
                send,
                {
                    "object": "list",
                    "data": [{"index": i, "embedding": [0.6, 0.8]} for i in range(len(inputs))],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3},
                },
            )
            return
        if path in ("/api/chat", "/api/generate"):
            await self._ollama(send, path, words, stream)
        elif path.endswith("/chat/completions") or path.endswith("/completions"):
            await self._openai(send, path, words, stream)
        else:
            await _json(send, {"error": "not found"}, 404)

    def _final(self, n: int) -> dict[str, Any]:
        return {
            "done": True,
            "done_reason": "length" if n < len(WORDS) else "stop",
            "total_duration": 1_000_000,
            "load_duration": 0,
            "prompt_eval_count": 12,
            "prompt_eval_duration": 200_000,
            "eval_count": n,
            "eval_duration": 700_000,
        }

    async def _ollama(self, send: Any, path: str, words: list[str], stream: bool) -> None:
        chat = path == "/api/chat"

        def obj(text: str) -> dict[str, Any]:
            base = {"model": "stub", "created_at": "2025-01-01T00:00:00Z"}
            if chat:
                base["message"] = {"role": "assistant", "content": text}
            else:
                base["response"] = text
            return base

        if not stream:
            await _json(send, {**obj("".join(words)), **self._final(len(words))})
            return
        await _start(send, "application/x-ndjson")
        for i, word in enumerate(words):
            if self.fault == "drop" and i == self.drop_after:
                raise ConnectionResetError("stub dropped the connection")  # uvicorn aborts the response
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            await _body(send, json.dumps({**obj(word), "done": False}).encode() + b"\n")
        await _body(send, json.dumps({**obj(""), **self._final(len(words))}).encode() + b"\n", more=False)

    async def _openai(self, send: Any, path: str, words: list[str], stream: bool) -> None:
        chat = path.endswith("/chat/completions")
        usage = {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}
        reason = "length" if len(words) < len(WORDS) else "stop"
        if not stream:
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": reason}
                if chat
                else {"index": 0, "text": "".join(words), "finish_reason": reason}
            )
            await _json(
                send,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "stub",
                    "choices": [choice],
                    "usage": usage,
                },
            )
            return
        await _start(send, "text/event-stream")
        for i, word in enumerate(words):
            if self.fault == "drop" and i == self.drop_after:
                raise ConnectionResetError("stub dropped the connection")
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            choice = (
                {"index": 0, "delta": {"content": word}, "finish_reason": None}
                if chat
                else {"index": 0, "text": word, "finish_reason": None}
            )
            await _body(send, b"data: " + json.dumps({"id": "x", "choices": [choice]}).encode() + b"\n\n")
        last = (
            {"index": 0, "delta": {}, "finish_reason": reason}
            if chat
            else {"index": 0, "text": "", "finish_reason": reason}
        )
        await _body(send, b"data: " + json.dumps({"id": "x", "choices": [last]}).encode() + b"\n\n")
        await _body(send, b"data: " + json.dumps({"id": "x", "choices": [], "usage": usage}).encode() + b"\n\n")
        await _body(send, b"data: [DONE]\n\n", more=False)


async def _start(send: Any, content_type: str, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})


async def _body(send: Any, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _json(send: Any, obj: Any, status: int = 200) -> None:
    data = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":  # a standalone stub for benchmarks, as fast as uvicorn allows
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    args = parser.parse_args()
    stub = StubUpstream(tokens=args.tokens, port=args.port)
    stub.token_delay_s = args.token_delay
    uvicorn.run(
        stub,
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="off",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
