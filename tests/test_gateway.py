"""The gateway over real HTTP: a uvicorn server on 127.0.0.1 in front of the embedded SmolLM2 and
two stand-in upstreams, called by the official ollama, openai and langchain-ollama clients
unchanged, and by plain HTTP for the error shapes, metrics, log and guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmgauge.config import GatewaySettings, Settings, UpstreamSettings
from lmgauge.store import Store
from support.gateway_server import REPLY, GatewayServer, ollama_stub, openai_stub, wait_for

pytestmark = pytest.mark.integration
SHORT = {"temperature": 0, "num_predict": 8, "seed": 1}


@pytest.fixture(scope="module")
def stubs():
    servers = ollama_stub(), ollama_stub(), openai_stub()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, stubs):
    home = tmp_path_factory.mktemp("gateway-home")
    a, b, o = stubs
    settings = Settings(
        home=home,
        keep_alive=-1,
        aliases={"llama3.2:1b": "smollm2", "big": "stub"},
        gateway=GatewaySettings(
            upstreams=[
                UpstreamSettings(model="stub", urls=[a.url, b.url], num_ctx=64),
                UpstreamSettings(model="ostub", kind="openai", target="stub", urls=[o.base_url]),
            ]
        ),
    )
    with GatewayServer(settings) as srv:
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def run_client(server, code: str) -> dict:
    """Run client code in a fresh interpreter with OLLAMA_HOST pointing at the gateway, exactly
    as a user's script would (the ollama module reads OLLAMA_HOST when imported)."""
    env = {**os.environ, "OLLAMA_HOST": server.url, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- official clients, unchanged --------------------------------------------------------------------


def test_official_ollama_client_module_functions(server):
    result = run_client(
        server,
        """
import json, ollama
opts = {"temperature": 0, "num_predict": 8, "seed": 1}
g = ollama.generate(model="smollm2", prompt="Say hi", options=opts)
parts = list(ollama.generate(model="smollm2", prompt="Say hi", options=opts, stream=True))
c = ollama.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "Say hi"}], options=opts)
cs = list(ollama.chat(model="smollm2", messages=[{"role": "user", "content": "Say hi"}], options=opts, stream=True))
j = ollama.generate(model="smollm2", prompt="Give a JSON object with a key name.", format="json",
                    options={"temperature": 0, "num_predict": 24})
print(json.dumps({"g": g.response, "g_eval": g.eval_count, "g_total": g.total_duration, "g_prompt": g.prompt_eval_count,
                  "g_reason": g.done_reason, "g_load": g.load_duration, "g_eval_d": g.eval_duration,
                  "stream": "".join(p.response for p in parts), "last_done": parts[-1].done,
                  "stream_eval": parts[-1].eval_count, "c": c.message.content, "c_role": c.message.role,
                  "cs": "".join(p.message.content for p in cs), "json": j.response, "json_reason": j.done_reason}))
""",
    )
    assert result["g"] and result["g_eval"] >= 1 and result["g_total"] > 0 and result["g_prompt"] > 0
    assert result["g_reason"] in ("stop", "length") and result["g_eval_d"] > 0 and result["g_load"] >= 0
    assert result["stream"] == result["g"]  # greedy: same answer streamed or not
    assert result["last_done"] and result["stream_eval"] == result["g_eval"]
    assert result["c"] and result["c_role"] == "assistant" and result["cs"] == result["c"]
    if result["json_reason"] == "stop":  # a complete answer under format=json parses
        json.loads(result["json"])
    else:
        assert result["json"].lstrip().startswith("{")


def test_official_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    chat = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0, seed=1
    )
    assert chat.choices[0].message.content and chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens >= 1 and chat.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=8,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(stream)
    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
    assert text == chat.choices[0].message.content
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == chat.usage.completion_tokens
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    structured = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a colour as JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "colour", "schema": schema}},
    )
    if structured.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(structured.choices[0].message.content), schema)
    completion = client.completions.create(model="stub", prompt="The sky", max_tokens=3)
    assert completion.choices[0].text == "The sky is"
    emb = client.embeddings.create(model="stub", input=["a", "b"])  # the client asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert emb.data[1].embedding == pytest.approx(
        httpx.post(server.url + "/api/embed", json={"model": "stub", "input": "b"}).json()["embeddings"][0]
    )
    ids = [m.id for m in client.models.list()]
    assert "stub" in ids and "llama3.2:1b" in ids


def test_langchain_chat_ollama(server):
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model="smollm2", base_url=server.url, temperature=0, num_predict=8, seed=1)
    answer = llm.invoke("Say hi")
    assert answer.content and answer.response_metadata.get("eval_count", 0) >= 1
    streamed = "".join(chunk.content for chunk in llm.stream("Say hi"))
    assert streamed == answer.content


# --- the rest of the Ollama API ------------------------------------------------------------------------


def test_root_version_tags_show(http):
    assert http.get("/").text == "Ollama is running" and http.head("/").status_code == 200
    assert http.get("/api/version").json()["version"]
    names = [m["name"] for m in http.get("/api/tags").json()["models"]]
    assert "smollm2:135m" in names and "stub" in names and "llama3.2:1b" in names
    shown = http.post("/api/show", json={"model": "smollm2"}).json()
    assert shown["details"]["family"] == "llama" and shown["model_info"]["llama.context_length"] > 0
    assert http.post("/api/show", json={"model": "nope"}).status_code == 404


def test_ps_load_and_unload(http):
    r = http.post("/api/generate", json={"model": "smollm2"})  # empty prompt: load
    assert r.status_code == 200 and r.json()["done"] is True
    running = http.get("/api/ps").json()["models"]
    smol = [m for m in running if m["name"] == "smollm2"]
    assert smol and smol[0]["size"] > 50_000_000 and smol[0]["context_length"] == 4096
    r = http.post("/api/generate", json={"model": "smollm2", "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert not [m for m in http.get("/api/ps").json()["models"] if m["name"] == "smollm2"]


def test_embeddings_endpoints(http):
    r = http.post("/api/embed", json={"model": "smollm2", "input": ["hello", "world"]}).json()
    assert len(r["embeddings"]) == 2 and len(r["embeddings"][0]) == 576 and r["prompt_eval_count"] > 0
    legacy = http.post("/api/embeddings", json={"model": "stub", "prompt": "x"}).json()
    assert legacy["embedding"] == pytest.approx(
        http.post("/api/embed", json={"model": "stub", "input": "x"}).json()["embeddings"][0]
    )
    cut = http.post("/api/embed", json={"model": "smollm2", "input": "hello", "dimensions": 4}).json()
    assert len(cut["embeddings"][0]) == 4
    # Nothing to embed: Ollama answers an empty list (after checking the model); OpenAI refuses.
    for nothing in ("", []):
        empty = http.post("/api/embed", json={"model": "smollm2", "input": nothing})
        assert empty.status_code == 200 and empty.json()["embeddings"] == []
        assert http.post("/api/embed", json={"model": "no-such-model", "input": nothing}).status_code == 404
        assert http.post("/v1/embeddings", json={"model": "smollm2", "input": nothing}).status_code == 400


def test_raw_generate_and_upstream_generate(http):
    r = http.post(
        "/api/generate", json={"model": "smollm2", "prompt": "1, 2, 3,", "raw": True, "stream": False, "options": SHORT}
    ).json()
    assert r["response"] and r["prompt_eval_count"] >= 5
    r = http.post(
        "/api/generate", json={"model": "stub", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
    )
    assert r.json()["response"] == "The sky"
    r = http.post("/api/generate", json={"model": "big", "prompt": "x", "stream": False, "options": {"num_predict": 2}})
    assert r.json()["response"] == "The sky" and r.json()["model"] == "big"  # an alias of an upstream model


# --- errors, in each API's shape --------------------------------------------------------------------


def test_error_shapes(http):
    r = http.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = http.post("/api/chat", content=b"{not json")
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "x", "options": {"bogus": 1}})
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert http.get("/api/nothing-here").json()["error"].endswith("not found")
    assert http.get("/api/chat").status_code == 405


def test_an_empty_raw_completion_prompt_is_a_client_error_not_a_500(http):
    # An empty raw prompt is zero tokens for SmolLM2 (no BOS), and llama.cpp cannot decode an
    # empty batch: that was a 500 "llama_decode failed" (found by the fuzz).
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "", "max_tokens": 1})
    assert r.status_code == 400 and "prompt is empty" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/api/generate", json={"model": "smollm2", "prompt": "", "suffix": "", "raw": True})
    assert r.status_code == 200 and r.json()["done"]  # Ollama's load request, not a generation
    # The slot was freed: the next request is answered.
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "1, 2,", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_upstream_4xx_passes_through_without_failover(http, stubs):
    before = [len(s.requests) for s in stubs]
    r = http.post(
        "/api/chat",
        json={
            "model": "stub",
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
            "options": {"num_predict": 2},
        },
    )
    assert r.status_code == 200 and r.json()["message"]["content"] == "The sky"
    # The nodes answer 404 for a model they lack: the client gets that, and only one node was asked.
    pool = http.post(
        "/api/chat", json={"model": "ostub", "messages": [{"role": "user", "content": "x"}], "stream": False}
    )
    assert pool.status_code == 200
    assert sum(len(s.requests) for s in stubs) - sum(before) == 2


def test_context_guard_refuses_with_numbers_and_reports_usage(http):
    r = http.post(
        "/api/chat",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "word " * 5000}], "stream": False},
    )
    assert r.status_code == 400 and "context window" in r.json()["error"] and "4096" in r.json()["error"]
    r = http.post(
        "/api/chat",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Say hi"}],
            "stream": False,
            "options": SHORT,
        },
    )
    used, window = map(int, r.headers["x-lmgauge-context"].split("/"))
    assert window == 4096 and 0 < used == r.json()["prompt_eval_count"]
    # An upstream model with a configured window but no tokenizer is not guessed at: no header.
    r = http.post(
        "/api/chat", json={"model": "stub", "messages": [{"role": "user", "content": "w " * 100}], "stream": False}
    )
    assert r.status_code == 200 and "x-lmgauge-context" not in r.headers


def test_max_body_and_api_key(tmp_path, stubs):
    settings = Settings(
        home=tmp_path,
        gateway=GatewaySettings(
            api_key="s3cret", max_body_bytes=2048, upstreams=[UpstreamSettings(model="stub", urls=[stubs[0].url])]
        ),
    )
    with GatewayServer(settings) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/").status_code == 200  # the liveness check stays open
        r = c.post("/api/chat", json={"model": "stub", "messages": []})
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert c.get("/v1/models").json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer s3cret"}
        body = {"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False}
        assert c.post("/api/chat", json=body, headers=auth).status_code == 200
        big = {**body, "messages": [{"role": "user", "content": "x" * 4000}]}
        r = c.post("/api/chat", json=big, headers=auth)
        assert r.status_code == 413 and "limit" in r.json()["error"]


def test_busy_gateway_answers_503_with_retry_after(tmp_path):
    slow = ollama_stub()
    slow.faults.first_token_delay = 2.0  # holds the one slot while the second request comes in
    try:
        settings = Settings(
            home=tmp_path,
            gateway=GatewaySettings(
                max_queue=0, upstreams=[UpstreamSettings(model="stub", urls=[slow.url], max_concurrency=1)]
            ),
        )
        with GatewayServer(settings) as srv:
            import concurrent.futures

            body = {"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False}
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(httpx.post, srv.url + "/api/chat", json=body, timeout=30)
                # the first request has the slot once the gateway counts it in flight (a pool
                # thread may be slow to send it)
                assert wait_for(lambda: srv.gateway.gauges()["models"].get("stub", {}).get("in_flight") == 1)
                second = httpx.post(srv.url + "/api/chat", json=body, timeout=30)
                assert first.result().status_code == 200
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert "busy" in second.json()["error"]
    finally:
        slow.stop()


# --- what the gateway records -----------------------------------------------------------------------


def test_metrics_parse_and_count_requests(http, server):
    http.post("/api/chat", json={"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False})
    text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["model"], s.labels["status"]): s.value
        for s in families["lmgauge_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("stub", "ok")] >= 1
    for name in (
        "lmgauge_ttft_seconds",
        "lmgauge_tpot_seconds",
        "lmgauge_e2e_seconds",
        "lmgauge_context_utilization_ratio",
    ):
        counts = [s.value for s in families[name].samples if s.name.endswith("_count")]
        assert counts and max(counts) >= 1, name
    assert any(s.value > 0 for s in families["lmgauge_output_tokens"].samples)
    health = {(s.labels["url"]): s.value for s in families["lmgauge_upstream_healthy"].samples}
    assert len(health) == 3
    for name in ("lmgauge_queue_depth", "lmgauge_in_flight", "lmgauge_cache_hits", "lmgauge_window_latency_ms"):
        assert name in families


def test_request_log_rows(http, server):
    since = time.time()
    http.post("/api/chat", json={"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False})
    http.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    rows = server.logged({"stub", "nope"}, since)
    ok = next(r for r in rows if r["model"] == "stub")
    assert ok["status"] == "ok" and ok["output_tokens"] == 8 and ok["upstream"].startswith("http://127.0.0.1:")
    assert ok["ttft_ms"] > 0 and ok["e2e_ms"] >= ok["ttft_ms"] and ok["extra"]["api"] == "ollama"
    bad = next(r for r in rows if r["model"] == "nope")
    assert bad["status"] == "invalid" and "not found" in bad["error"]


def test_log_and_monitor_commands(http, server, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from lmgauge.cli import app

    http.post("/api/chat", json={"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False})
    server.wait_logged(1)
    monkeypatch.setenv("LMGAUGE_DB", str(server.settings.db_path))
    runner = CliRunner()
    result = runner.invoke(app, ["log", "--model", "stub", "--json", "--limit", "3"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["model"] == "stub" for r in rows)
    result = runner.invoke(app, ["monitor", server.url, "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["models"]["stub"]["n"] >= 1 and stats["models"]["stub"]["ttft"]["p50"] > 0
    result = runner.invoke(app, ["monitor", server.url, "--once"])
    assert result.exit_code == 0 and "stub" in result.output
    result = runner.invoke(app, ["monitor", server.url, "--plot", str(tmp_path)])
    assert result.exit_code == 0
    for name in ("latency_over_time.png", "latency_histogram.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_command_without_a_gateway_is_one_line():
    from typer.testing import CliRunner

    from lmgauge.cli import app

    result = CliRunner().invoke(app, ["monitor", "http://127.0.0.1:9", "--once"])
    assert result.exit_code != 0 and "cannot reach the gateway" in str(result.exception)


def test_dashboard_page_is_served(http):
    page = http.get("/dashboard")
    assert page.status_code == 200 and "<canvas" in page.text and Path(__file__).exists()


def test_grafana_dashboard_uses_only_exposed_metrics(http):
    import re

    http.post("/api/chat", json={"model": "stub", "messages": [{"role": "user", "content": "x"}], "stream": False})
    text = http.get("/metrics").text
    exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exposed |= {f.name for f in text_string_to_metric_families(text)}
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-lmgauge-gateway.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"lmgauge_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= exposed, used - exposed


def test_library_remote_engines_behind_the_gateway(tmp_path):
    """`ollama:NAME` and `openai:NAME@URL` models go through the library's own engines."""
    remote, oremote = ollama_stub(), openai_stub()
    try:
        settings = Settings(
            home=tmp_path,
            ollama_host=remote.url,
            aliases={"remote": "ollama:stub", "oremote": f"openai:stub@{oremote.base_url}"},
        )
        with GatewayServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            for model in ("remote", "oremote"):
                r = c.post(
                    "/api/chat",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": "x"}],
                        "stream": False,
                        "options": {"num_predict": 3},
                    },
                )
                assert r.status_code == 200 and r.json()["message"]["content"] == "The sky is", r.text
                lines = c.post("/api/generate", json={"model": model, "prompt": "x"}).text.splitlines()
                assert json.loads(lines[-1])["done"] is True and len(lines) == 9
            # The spellings themselves are the server's to use (aliases), not the clients'
            # (tests/test_gateway_security.py has the attacks).
            r = c.post("/api/chat", json={"model": "ollama:stub", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 404
    finally:
        remote.stop()
        oremote.stop()


def test_tool_calls_pass_through_both_ways(tmp_path):
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    olla, oai = ollama_stub(tool_calls=calls), openai_stub(tool_calls=calls)
    try:
        settings = Settings(
            home=tmp_path,
            gateway=GatewaySettings(
                upstreams=[
                    UpstreamSettings(model="o", target="stub", urls=[olla.url]),
                    UpstreamSettings(model="v", kind="openai", target="stub", urls=[oai.base_url]),
                ]
            ),
        )
        with GatewayServer(settings) as srv:
            import ollama
            from openai import OpenAI

            client = ollama.Client(host=srv.url)
            openai_client = OpenAI(base_url=srv.url + "/v1", api_key="unused")
            messages = [{"role": "user", "content": "Weather in Tokyo?"}]
            for model in ("o", "v"):
                answer = client.chat(model=model, messages=messages, tools=tools)
                assert answer.message.tool_calls[0].function.name == "get_weather"
                assert answer.message.tool_calls[0].function.arguments == {"city": "Tokyo"}
                streamed = [
                    c
                    for c in client.chat(model=model, messages=messages, tools=tools, stream=True)
                    if c.message.tool_calls
                ]
                assert streamed and streamed[-1].message.tool_calls[0].function.arguments == {"city": "Tokyo"}
                chat = openai_client.chat.completions.create(model=model, messages=messages, tools=tools)
                call = chat.choices[0].message.tool_calls[0]
                assert chat.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {
                    "city": "Tokyo"
                }
            assert olla.requests[-1].body["tools"] == tools  # passed through unchanged
    finally:
        olla.stop()
        oai.stop()


def test_client_gone_mid_stream_cancels_and_frees_the_slot(server):
    before = server.gateway.log.written
    with httpx.stream(
        "POST",
        server.url + "/api/generate",
        timeout=60,
        json={"model": "smollm2", "prompt": "Count from 1 to 500.", "options": {"num_predict": 400, "temperature": 0}},
    ) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["done"] is False
    # The gateway notices, cancels the engine's job and gives the admission slot back.
    deadline = time.time() + 30
    while time.time() < deadline:
        slots = server.gateway.gauges()["models"]
        if all(g["in_flight"] == 0 for g in slots.values()):
            break
        time.sleep(0.05)
    assert all(g["in_flight"] == 0 for g in server.gateway.gauges()["models"].values())
    server.wait_logged(before + 1)
    row = Store(server.settings.db_path).requests(model="smollm2", limit=1)[0]
    assert row["status"] == "cancel" and (row["output_tokens"] or 0) < 400


def test_router_and_cache_hooks_drive_requests(tmp_path):
    """The hooks routing.py and cache.py will fill: `auto` asks the router; a cache hit is replayed
    without touching the backend, and counted."""
    from lmgauge.types import Result, Timings

    class Router:  # the gateway's router protocol (routing/gateway.py), with one tier
        def plan(self, request):
            from lmgauge.routing import Tier

            return [Tier("only", "stub")], "the only tier"

        def check(self, request, result):
            return None

        def escalates(self, error):
            return False

    class Cache:
        def __init__(self):
            self.store = {}

        def get(self, model, request):
            return self.store.get(request.messages[-1].content)

        def put(self, model, request, result):
            self.store[request.messages[-1].content] = Result(
                model, result.content, "stop", Timings(prompt_tokens=1, output_tokens=2)
            )

    stub = ollama_stub()
    try:
        settings = Settings(
            home=tmp_path, gateway=GatewaySettings(upstreams=[UpstreamSettings(model="stub", urls=[stub.url])])
        )
        with GatewayServer(settings) as srv:
            srv.gateway.router, srv.gateway.cache = Router(), Cache()
            body = {"model": "auto", "messages": [{"role": "user", "content": "same question"}], "stream": False}
            first = httpx.post(srv.url + "/api/chat", json=body, timeout=30).json()
            second = httpx.post(srv.url + "/api/chat", json=body, timeout=30).json()
            assert first["message"]["content"] == second["message"]["content"] == REPLY
            assert len([r for r in stub.requests if r.path == "/api/chat"]) == 1  # the second came from the cache
            assert 'lmgauge_cache_hits_total{model="stub"} 1.0' in httpx.get(srv.url + "/metrics").text
            srv.wait_logged(2)
            rows = Store(settings.db_path).requests(limit=2)
            assert [r["cache_hit"] for r in rows] == [1, 0] and rows[0]["model"] == "auto"
    finally:
        stub.stop()


def test_an_ollama_engine_address_that_is_the_gateway_itself_is_refused(tmp_path):
    settings = Settings(home=tmp_path, aliases={"llama3.2": "ollama:llama3.2"})
    with GatewayServer(settings) as srv:
        srv.settings.ollama_host = srv.url  # e.g. OLLAMA_HOST taken for both meanings
        r = httpx.post(srv.url + "/api/chat", json={"model": "llama3.2", "messages": []}, timeout=10)
        assert r.status_code == 502 and "this gateway itself" in r.json()["error"]
