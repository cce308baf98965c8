"""OllamaEngine against the stand-in Ollama server (and, for exact wire values, canned answers)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import jsonschema
import pytest

from lmgauge.engines.base import Engine, collect, with_client_clock
from lmgauge.engines.ollama import OllamaEngine
from lmgauge.errors import (
    EngineError,
    InvalidOptionError,
    UnknownModelError,
)
from lmgauge.types import ChatRequest, Chunk, GenerateRequest, Message, Options
from support.standins import DEFAULT_REPLY, OllamaStandin, split_tokens

N_REPLY = len(split_tokens(DEFAULT_REPLY))  # 9


@pytest.fixture
def engine(make_settings, ollama_standin: OllamaStandin) -> Iterator[OllamaEngine]:
    e = OllamaEngine(make_settings(request_timeout=10.0), host=ollama_standin.url)
    yield e
    e.close()


def chat(text: str = "why is the sky blue?", model: str = "standin", **kwargs) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", text)], **kwargs)


def chunks_of(stream: Iterator[Chunk]) -> list[Chunk]:
    return list(with_client_clock(stream))


# --- streaming and timings --------------------------------------------------------------------------


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert engine.name == "ollama"


def test_chat_streams_tokens_and_carries_the_servers_timings(engine, ollama_standin):
    ollama_standin.token_delay = 0.002
    chunks = chunks_of(engine.chat(chat()))
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) == N_REPLY  # one chunk per token: really streamed
    assert chunks[-1].done and chunks[-1].result is not None
    assert not any(c.done for c in chunks[:-1])

    result = collect(iter(chunks))
    assert result.content == DEFAULT_REPLY
    assert result.done_reason == "stop"
    assert result.engine == "ollama"
    assert result.model == "standin"

    t = result.timings
    sent = ollama_standin.last("/api/chat").body
    assert t.prompt_tokens == ollama_standin.prompt_tokens(sent)
    assert t.prompt_eval_tokens == t.prompt_tokens
    assert t.output_tokens == N_REPLY
    for value in (t.prompt_eval_ns, t.eval_ns, t.total_ns):
        assert isinstance(value, int) and value > 0
    assert t.total_ns >= t.load_ns + t.prompt_eval_ns + t.eval_ns
    # client clock, stamped by with_client_clock
    assert t.sent_ns < t.first_token_ns <= t.end_ns
    assert len(t.chunk_ns) == N_REPLY
    assert t.ttft_ms is not None and t.e2e_ms is not None and t.tpot_ms is not None
    assert len(t.itl_ms) == N_REPLY - 1
    assert t.decode_tps is not None and t.prefill_tps is not None


def test_first_request_reports_the_load(engine, ollama_standin):
    ollama_standin.load_delay = 0.05
    first = collect(engine.chat(chat()))
    second = collect(engine.chat(chat()))
    assert first.timings.load_ns >= 50_000_000  # the stand-in slept that long loading
    assert second.timings.load_ns < first.timings.load_ns


def test_non_streaming_chat(make_settings, ollama_standin):
    engine = OllamaEngine(make_settings(), host=ollama_standin.url, stream=False)
    chunks = chunks_of(engine.chat(chat()))
    assert [c.content for c in chunks] == [DEFAULT_REPLY, ""]
    assert ollama_standin.last("/api/chat").body["stream"] is False
    result = chunks[-1].result
    assert result.timings.output_tokens == N_REPLY
    assert result.timings.first_token_ns is not None
    engine.close()


def test_non_streaming_generate(make_settings, ollama_standin):
    engine = OllamaEngine(make_settings(), host=ollama_standin.url, stream=False)
    result = collect(with_client_clock(engine.generate(GenerateRequest("standin", "Once upon a time"))))
    assert result.content == DEFAULT_REPLY
    assert result.context and all(isinstance(i, int) for i in result.context)
    assert ollama_standin.last("/api/generate").body["stream"] is False
    engine.close()


def test_num_predict_ends_with_length(engine):
    result = collect(engine.chat(chat(options=Options(num_predict=3))))
    assert result.content == "The quick brown"
    assert result.done_reason == "length"
    assert result.timings.output_tokens == 3


def test_exact_wire_values_become_timings(httpserver, make_settings):
    """Numbers from Ollama's own docs: every field lands where DESIGN.md says, untouched,
    and a final chunk that still carries text (as the streaming docs show) is not lost."""
    lines = [
        {"model": "gemma4", "created_at": "2025-10-26T17:15:24.097767Z", "response": "That", "done": False},
        {"model": "gemma4", "created_at": "2025-10-26T17:15:24.109172Z", "response": "'s", "done": False},
        {
            "model": "gemma4",
            "created_at": "2025-10-26T17:15:24.166576Z",
            "response": "!",
            "done": True,
            "done_reason": "stop",
            "context": [1, 2, 3],
            "total_duration": 174560334,
            "load_duration": 101397084,
            "prompt_eval_count": 11,
            "prompt_eval_duration": 13074791,
            "eval_count": 18,
            "eval_duration": 52479709,
        },
    ]
    httpserver.expect_request("/api/generate", method="POST").respond_with_data(
        "".join(json.dumps(line) + "\n" for line in lines), content_type="application/x-ndjson"
    )
    engine = OllamaEngine(make_settings(), host=httpserver.url_for("/").rstrip("/"))
    result = collect(with_client_clock(engine.generate(GenerateRequest("gemma4", "hi"))))
    t = result.timings
    assert result.content == "That's!"
    assert (t.total_ns, t.load_ns, t.prompt_tokens, t.prompt_eval_tokens, t.prompt_eval_ns) == (
        174560334,
        101397084,
        11,
        11,
        13074791,
    )
    assert (t.output_tokens, t.eval_ns, t.cached_tokens) == (18, 52479709, 0)
    assert result.context == [1, 2, 3]
    assert len(t.chunk_ns) == 3
    engine.close()


def test_missing_counts_stay_unknown(httpserver, make_settings):
    """An answer without stats (e.g. a fully cached prompt on old Ollama) is not filled in."""
    httpserver.expect_request("/api/chat", method="POST").respond_with_data(
        json.dumps({"model": "m", "message": {"role": "assistant", "content": "four words right here"}, "done": False})
        + "\n"
        + json.dumps({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True})
        + "\n",
        content_type="application/x-ndjson",
    )
    engine = OllamaEngine(make_settings(), host=httpserver.url_for("/").rstrip("/"))
    t = collect(with_client_clock(engine.chat(chat(model="m")))).timings
    assert (t.prompt_tokens, t.output_tokens, t.prompt_eval_ns, t.eval_ns) == (0, 0, None, None)
    assert t.ttft_ms is not None and t.tpot_ms is None
    engine.close()


# --- what is sent -------------------------------------------------------------------------------------


def test_chat_request_body(engine, ollama_standin):
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["age", "ok"],
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    options = Options.from_dict(
        {"temperature": 0, "seed": 42, "num_ctx": 2048, "top_k": 5, "stop": ["\n\n"], "mirostat": 0}
    )
    request = ChatRequest(
        model="standin",
        messages=[Message("system", "Be brief."), Message("user", "Age?")],
        options=options,
        format=schema,
        tools=tools,
        keep_alive=0,
    )
    result = collect(engine.chat(request))
    body = ollama_standin.last("/api/chat").body
    assert body["model"] == "standin"
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Age?"}]
    assert body["options"] == {
        "temperature": 0,
        "seed": 42,
        "num_ctx": 2048,
        "top_k": 5,
        "stop": ["\n\n"],
        "mirostat": 0,
    }
    assert body["format"] == schema
    assert body["keep_alive"] == 0
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["stream"] is True
    jsonschema.validate(json.loads(result.content), schema)


def test_defaults_are_not_sent(engine, ollama_standin):
    collect(engine.chat(chat()))
    body = ollama_standin.last("/api/chat").body
    assert "options" not in body and "format" not in body and "keep_alive" not in body


def test_json_format_and_keep_alive_seconds(engine, ollama_standin):
    result = collect(engine.chat(chat(format="json", keep_alive=600)))
    body = ollama_standin.last("/api/chat").body
    assert body["format"] == "json" and body["keep_alive"] == 600
    assert isinstance(json.loads(result.content), dict)


def test_generate_request_body(engine, ollama_standin):
    request = GenerateRequest(
        model="standin",
        prompt="def f():",
        system="You write Python.",
        suffix="    return x",
        options=Options(temperature=0.5),
        keep_alive=-1,
    )
    collect(engine.generate(request))
    body = ollama_standin.last("/api/generate").body
    assert body["prompt"] == "def f():" and body["system"] == "You write Python."
    assert body["suffix"] == "    return x"
    assert body["options"] == {"temperature": 0.5}
    assert body["keep_alive"] == -1
    assert "raw" not in body


def test_generate_raw(engine, ollama_standin):
    result = collect(engine.generate(GenerateRequest("standin", "<|im_start|>user\nhi", raw=True)))
    body = ollama_standin.last("/api/generate").body
    assert body["raw"] is True
    assert result.timings.prompt_tokens == len(split_tokens("<|im_start|>user\nhi"))


def test_tool_calls_come_back(engine, ollama_standin):
    ollama_standin.tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = collect(engine.chat(chat("weather in Tokyo?", tools=tools)))
    assert result.tool_calls == [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    assert result.content == ""


def test_tool_history_is_sent(engine, ollama_standin):
    messages = [
        Message("user", "weather in Toronto?"),
        Message("assistant", "", tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}}]),
        Message("tool", "11 degrees celsius", tool_name="get_weather"),
    ]
    collect(engine.chat(ChatRequest("standin", messages)))
    sent = ollama_standin.last("/api/chat").body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Toronto"}}
    assert sent[2] == {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"}


def test_closing_early_cancels_cleanly(engine, ollama_standin):
    ollama_standin.token_delay = 0.01
    stream = with_client_clock(engine.chat(chat()))
    assert next(stream).content
    stream.close()  # no exception, connection released
    assert collect(engine.chat(chat())).content == DEFAULT_REPLY  # the engine still works


# --- the rest of the protocol ---------------------------------------------------------------------------


def test_embed(engine, ollama_standin):
    emb = engine.embed("standin-embed", ["Why is the sky blue?", "Why is the grass green?"])
    assert ollama_standin.last("/api/embed").body == {
        "model": "standin-embed",
        "input": ["Why is the sky blue?", "Why is the grass green?"],
    }
    assert len(emb.vectors) == 2 and len(emb.vectors[0]) == ollama_standin.embedding_dim
    for v in emb.vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6)
    assert emb.vectors[0] != emb.vectors[1]
    assert emb.prompt_tokens == 10
    assert emb.total_ns > 0


def test_list_models(engine):
    models = engine.list_models()
    assert [m.name for m in models] == ["standin:latest", "standin-embed:latest"]
    assert models[0].engine == "ollama" and models[0].size_bytes == 91_739_296
    assert models[0].details["quantization_level"] == "Q4_1"
    assert engine.host in models[0].source


def test_info_maps_architecture_like_a_gguf(engine, ollama_standin):
    info = engine.info("standin")
    assert ollama_standin.last("/api/show").body == {"model": "standin"}
    d = info.details
    assert (d["architecture"], d["n_layer"], d["n_head"], d["n_head_kv"], d["head_dim"], d["n_ctx_train"]) == (
        "llama",
        30,
        9,
        3,
        64,
        8192,
    )
    assert d["parameters"] == 134_515_008 and d["quantization"] == "Q4_1"
    assert d["chat_template"] is True and "completion" in d["capabilities"]


def test_loaded_and_unload(engine, ollama_standin):
    assert engine.loaded() == []
    collect(engine.chat(chat(options=Options(num_ctx=2048))))
    (model,) = engine.loaded()
    assert model.name == "standin:latest" and model.context_length == 2048
    assert model.expires_at is not None and model.expires_at > time.time()
    engine.unload("standin")
    body = ollama_standin.last("/api/generate").body
    assert body["model"] == "standin" and body["keep_alive"] == 0 and not body.get("prompt")
    assert engine.loaded() == []


def test_keep_alive_forever_has_no_expiry(engine):
    collect(engine.chat(chat(keep_alive=-1)))
    (model,) = engine.loaded()
    assert model.expires_at is None


def test_tokenize_is_not_available(engine):
    with pytest.raises(EngineError, match="no tokenize endpoint"):
        engine.tokenize("standin", "hello")
    with pytest.raises(EngineError, match="no detokenize endpoint"):
        engine.detokenize("standin", [1, 2])


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_model(engine, ollama_standin):
    with pytest.raises(UnknownModelError) as err:
        collect(engine.chat(chat(model="llama9")))
    assert err.value.name == "llama9"
    assert err.value.available == ["standin:latest", "standin-embed:latest"]
    assert "ollama pull llama9" in str(err.value) and ollama_standin.url in str(err.value)
    for call in (
        lambda: engine.info("llama9"),
        lambda: engine.embed("llama9", ["x"]),
        lambda: engine.unload("llama9"),
        lambda: collect(engine.generate(GenerateRequest("llama9", "x"))),
    ):
        with pytest.raises(UnknownModelError):
            call()


def test_stream_that_ends_without_the_final_chunk(httpserver, make_settings):
    httpserver.expect_request("/api/chat", method="POST").respond_with_data(
        json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False}) + "\n",
        content_type="application/x-ndjson",
    )
    engine = OllamaEngine(make_settings(), host=httpserver.url_for("/").rstrip("/"))
    with pytest.raises(EngineError, match="without the final one"):
        collect(engine.chat(chat(model="m")))


def test_garbage_from_the_server(httpserver, make_settings):
    httpserver.expect_request("/api/chat", method="POST").respond_with_data(
        "<html>not ollama</html>\n", content_type="text/html"
    )
    engine = OllamaEngine(make_settings(), host=httpserver.url_for("/").rstrip("/"))
    with pytest.raises(EngineError, match="cannot read"):
        collect(engine.chat(chat(model="m")))


def test_bare_404_is_not_an_unknown_model(httpserver, make_settings):
    """An Ollama too old for /api/embed answers Go's plain "404 page not found"."""
    httpserver.expect_request("/api/embed", method="POST").respond_with_data(
        "404 page not found", status=404, content_type="text/plain"
    )
    engine = OllamaEngine(make_settings(), host=httpserver.url_for("/").rstrip("/"))
    with pytest.raises(EngineError, match="404 Not Found.*check the URL"):
        engine.embed("m", ["x"])


def test_invalid_format_is_an_option_error(engine):
    with pytest.raises(InvalidOptionError):
        collect(engine.chat(chat(format="xml")))
