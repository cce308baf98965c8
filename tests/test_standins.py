"""The stand-in servers speak the documented wire formats: checked against Ollama's OpenAPI file
and with the official clients, so tests built on them test against the real protocol."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from support.gateway_server import wait_for
from support.standins import DEFAULT_REPLY, OllamaStandin, OpenAIStandin, split_tokens

# Ollama's OpenAPI file, kept in tests/data (MIT, tests/data/OLLAMA-LICENSE) so the check runs anywhere.
OPENAPI = Path(os.environ.get("LMGAUGE_OLLAMA_OPENAPI", Path(__file__).parent / "data" / "ollama-openapi.yaml"))


@pytest.fixture(scope="module")
def ollama_schema() -> Any:
    """validate(instance, "ChatResponse") against the components of Ollama's OpenAPI file."""
    import yaml  # the test extra: pip install -e '.[test]'

    if not OPENAPI.is_file():
        pytest.fail(f"Ollama's OpenAPI file not found at {OPENAPI} (set LMGAUGE_OLLAMA_OPENAPI to its path)")
    spec = yaml.safe_load(OPENAPI.read_text())

    def validate(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        jsonschema.validate(instance, schema)

    return validate


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def sse(response: httpx.Response) -> list[str]:
    assert response.text.endswith("\n\n")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


# --- Ollama -----------------------------------------------------------------------------------------------


def test_ollama_chat_stream_shape(ollama_standin, ollama_schema):
    r = httpx.post(
        f"{ollama_standin.url}/api/chat", json={"model": "standin", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(r)
    assert len(lines) == len(split_tokens(DEFAULT_REPLY)) + 1
    for line in lines[:-1]:
        ollama_schema(line, "ChatStreamEvent")
        assert line["done"] is False and line["message"]["role"] == "assistant"
    final = lines[-1]
    ollama_schema(final, "ChatResponse")
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(final[key], int), key
    assert "".join(line["message"]["content"] for line in lines) == DEFAULT_REPLY


def test_ollama_generate_stream_and_whole(ollama_standin, ollama_schema):
    url = f"{ollama_standin.url}/api/generate"
    lines = ndjson(httpx.post(url, json={"model": "standin", "prompt": "hi"}))
    for line in lines:
        ollama_schema(line, "GenerateStreamEvent")
    ollama_schema(lines[-1], "GenerateResponse")
    assert isinstance(lines[-1]["context"], list)
    whole = httpx.post(url, json={"model": "standin", "prompt": "hi", "stream": False})
    assert whole.headers["content-type"] == "application/json"
    ollama_schema(whole.json(), "GenerateResponse")
    assert whole.json()["response"] == DEFAULT_REPLY and whole.json()["done"] is True


def test_ollama_load_and_unload_answers(ollama_standin):
    url = f"{ollama_standin.url}/api/generate"
    assert httpx.post(url, json={"model": "standin"}).json()["done_reason"] == "load"
    assert "standin:latest" in ollama_standin.loaded
    assert httpx.post(url, json={"model": "standin", "keep_alive": 0}).json()["done_reason"] == "unload"
    assert ollama_standin.loaded == {}


def test_ollama_other_endpoints(ollama_standin, ollama_schema):
    base = ollama_standin.url
    httpx.post(
        f"{base}/api/chat",
        json={"model": "standin", "messages": [{"role": "user", "content": "x"}], "keep_alive": "10m", "stream": False},
    )
    for path, name in (("/api/tags", "ListResponse"), ("/api/ps", "PsResponse"), ("/api/version", "VersionResponse")):
        r = httpx.get(base + path)
        assert r.status_code == 200
        ollama_schema(r.json(), name)
    ollama_schema(httpx.post(f"{base}/api/show", json={"model": "standin"}).json(), "ShowResponse")
    embed = httpx.post(f"{base}/api/embed", json={"model": "standin-embed", "input": "hello"}).json()
    ollama_schema(embed, "EmbedResponse")
    assert len(embed["embeddings"]) == 1
    assert httpx.get(base).text == "Ollama is running"


def test_ollama_errors(ollama_standin, ollama_schema):
    r = httpx.post(f"{ollama_standin.url}/api/chat", json={"model": "x", "messages": []})
    assert (r.status_code, r.json()) == (404, {"error": "model 'x' not found"})
    ollama_schema(r.json(), "ErrorResponse")
    assert httpx.post(f"{ollama_standin.url}/api/chat", content=b"{not json").status_code == 400
    ollama_standin.faults.error_after = 1
    lines = ndjson(httpx.post(f"{ollama_standin.url}/api/generate", json={"model": "standin", "prompt": "x"}))
    assert lines[-1] == {"error": ollama_standin.faults.message} and len(lines) == 2


# --- OpenAI -----------------------------------------------------------------------------------------------


def test_openai_sse_shape(openai_standin):
    r = httpx.post(
        f"{openai_standin.base_url}/chat/completions",
        json={
            "model": "standin-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"] == "text/event-stream"
    data = sse(r)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 9
    assert all(e["usage"] is None for e in events[:-1])  # as OpenAI documents for include_usage


def test_openai_no_usage_without_include_usage(openai_standin):
    r = httpx.post(
        f"{openai_standin.base_url}/completions", json={"model": "standin-model", "prompt": "hi", "stream": True}
    )
    events = [json.loads(d) for d in sse(r)[:-1]]
    assert all("usage" not in e for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == DEFAULT_REPLY


def test_official_openai_client_reads_the_standin(start_standin):
    import openai  # the test extra: pip install -e '.[test]'

    server = start_standin(OpenAIStandin, flavor="llama-server")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(model="standin-model", messages=msgs, max_tokens=3)
    assert whole.choices[0].message.content == "The quick brown"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model="standin-model", messages=msgs, stream=True, stream_options={"include_usage": True}
    )
    parts = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == DEFAULT_REPLY
    assert parts[-1].usage.total_tokens == parts[-1].usage.prompt_tokens + 9
    assert [m.id for m in client.models.list()] == ["standin-model"]
    emb = client.embeddings.create(model="standin-model", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=msgs)


def test_openai_api_key(start_standin):
    server = start_standin(OpenAIStandin, api_key="sk-1")
    assert httpx.get(f"{server.base_url}/models").status_code == 401
    assert httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer sk-1"}).status_code == 200


# --- knobs and machinery --------------------------------------------------------------------------------------


def test_reply_knobs(start_standin):
    server = start_standin(OllamaStandin, reply=lambda body: body["prompt"].upper(), num_tokens=5)
    r = httpx.post(f"{server.url}/api/generate", json={"model": "standin", "prompt": "a b", "stream": False})
    assert r.json()["response"] == "A B A B A"
    r = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "standin", "prompt": "x y z", "stream": False, "options": {"stop": ["Z"]}},
    )
    assert r.json()["response"] == "X Y " and r.json()["done_reason"] == "stop"


def test_fault_times_and_paths(ollama_standin):
    url = ollama_standin.url
    ollama_standin.faults.status = 500
    ollama_standin.faults.paths = ["/api/chat"]
    ollama_standin.faults.times = 2
    assert httpx.get(f"{url}/api/tags").status_code == 200  # not a faulty path
    body = {"model": "standin", "messages": [{"role": "user", "content": "x"}], "stream": False}
    codes = [httpx.post(f"{url}/api/chat", json=body).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    assert [r.path for r in ollama_standin.requests] == ["/api/tags"] + ["/api/chat"] * 3


def test_hung_requests_are_counted_and_released(start_standin):
    server = start_standin(OllamaStandin)
    server.faults.hang = True
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx.get(f"{server.url}/api/tags", timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: server.active >= 3, timeout=10)
    assert server.active == 3 and server.max_active == 3
    server.stop()  # releases the hung requests instead of waiting for the clients to give up
    for t in threads:
        t.join(timeout=10)  # a hang guard: the clients' own timeout is 30 s
    assert not any(t.is_alive() for t in threads)


def test_hold_streams_waits_for_n_open_streams_then_lets_all_go(start_standin):
    server = start_standin(OllamaStandin)
    server.hold_streams(3)
    first_token: dict[int, float] = {}

    def stream(i: int) -> None:
        body = {"model": "standin", "prompt": "x", "stream": True}
        with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=30) as r:
            for _ in r.iter_lines():
                first_token.setdefault(i, time.monotonic())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for t in threads[:2]:
        t.start()
    wait_for(lambda: server.active >= 2, timeout=10)
    time.sleep(0.2)
    assert server.active == 2 and not first_token  # two open, both held before their first token
    threads[2].start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(first_token) == [0, 1, 2] and server.max_active == 3
    # The hold is over for good: a lone stream is not held again.
    t0 = time.monotonic()
    stream(3)
    assert first_token[3] - t0 < 5


def test_hold_streams_gives_up_after_its_limit(start_standin):
    server = start_standin(OllamaStandin)
    server.hold_streams(5, limit_s=0.3)
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/api/generate", json={"model": "standin", "prompt": "x", "stream": False}, timeout=30)
    assert r.status_code == 200 and r.json()["done"]
    assert time.monotonic() - t0 >= 0.3  # it waited for the others that never came, then answered


def test_context_manager_frees_the_port():
    with OllamaStandin() as server:
        url = server.url
        assert httpx.get(url).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_split_tokens_round_trips():
    text = "  Hello,  world!\n\nNew line "
    assert "".join(split_tokens(text)) == text
    assert split_tokens("a b") == ["a", " b"]
