"""OpenAIEngine against the stand-in OpenAI-compatible server (vLLM, llama-server and plain
flavours) and, for exact wire values, canned answers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import jsonschema
import pytest

from lmgauge.engines._http import error_message
from lmgauge.engines.base import Engine, collect, with_client_clock
from lmgauge.engines.openai import OpenAIEngine
from lmgauge.errors import (
    EngineError,
    InvalidOptionError,
    UnknownModelError,
)
from lmgauge.types import ChatRequest, GenerateRequest, Message, Options
from lmgauge.wire.openai import messages_to_wire as to_openai_messages
from lmgauge.wire.openai import params_to_wire as openai_params
from lmgauge.wire.openai import sse_data
from support.standins import DEFAULT_REPLY, OpenAIStandin, split_tokens

N_REPLY = len(split_tokens(DEFAULT_REPLY))  # 9
MODEL = "standin-model"


@pytest.fixture
def engine(make_settings, openai_standin: OpenAIStandin) -> Iterator[OpenAIEngine]:
    e = OpenAIEngine(make_settings(request_timeout=10.0), base_url=openai_standin.base_url)
    yield e
    e.close()


def chat(text: str = "why is the sky blue?", model: str = MODEL, **kwargs) -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", text)], **kwargs)


# --- streaming and timings --------------------------------------------------------------------------


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert engine.name == "openai"


def test_chat_streams_and_takes_counts_from_usage(engine, openai_standin):
    openai_standin.token_delay = 0.002
    openai_standin.cached_tokens = 4
    chunks = list(with_client_clock(engine.chat(chat())))
    assert len([c for c in chunks if c.content]) == N_REPLY
    result = collect(iter(chunks))
    assert result.content == DEFAULT_REPLY
    assert result.done_reason == "stop" and result.engine == "openai" and result.model == MODEL

    body = openai_standin.last("/v1/chat/completions").body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    t = result.timings
    assert t.prompt_tokens == openai_standin.prompt_tokens(body)
    assert t.output_tokens == N_REPLY
    assert t.cached_tokens == 4
    assert t.evaluated_tokens == t.prompt_tokens - 4
    # vLLM sends no engine clock: those stay unknown
    assert (t.prompt_eval_ns, t.eval_ns, t.total_ns, t.prompt_eval_tokens) == (None, None, None, None)
    # the client clock still works
    assert t.sent_ns < t.first_token_ns <= t.end_ns
    assert len(t.chunk_ns) == N_REPLY and t.tpot_ms is not None and len(t.itl_ms) == N_REPLY - 1


def test_llama_server_timings_are_the_engine_clock(start_standin, make_settings):
    server = start_standin(OpenAIStandin, flavor="llama-server", cached_tokens=3, token_delay=0.002)
    engine = OpenAIEngine(make_settings(), base_url=server.base_url)
    t = collect(with_client_clock(engine.chat(chat()))).timings
    prompt = server.prompt_tokens(server.last("/v1/chat/completions").body)
    assert t.prompt_tokens == prompt and t.cached_tokens == 3
    assert t.prompt_eval_tokens == prompt - 3
    assert t.output_tokens == N_REPLY
    assert isinstance(t.prompt_eval_ns, int) and t.prompt_eval_ns > 0
    assert isinstance(t.eval_ns, int) and t.eval_ns > 0
    assert t.decode_tps is not None and t.prefill_tps is not None
    engine.close()


def test_exact_wire_values_become_timings(httpserver, make_settings):
    events = [
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}],
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}],
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "timings": {"cache_n": 20, "prompt_n": 7, "prompt_ms": 12.5, "predicted_n": 2, "predicted_ms": 30.25},
        },
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [],
            "usage": {
                "prompt_tokens": 27,
                "completion_tokens": 2,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 20},
            },
        },
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_data(
        body, content_type="text/event-stream"
    )
    engine = OpenAIEngine(make_settings(), base_url=httpserver.url_for("/v1"))
    result = collect(with_client_clock(engine.chat(chat(model="m"))))
    t = result.timings
    assert result.content == "Hello world" and result.done_reason == "length"
    assert (t.prompt_tokens, t.cached_tokens, t.prompt_eval_tokens, t.output_tokens) == (27, 20, 7, 2)
    assert (t.prompt_eval_ns, t.eval_ns) == (12_500_000, 30_250_000)
    engine.close()


def test_no_usage_means_no_invented_counts(start_standin, make_settings):
    """A server that reports nothing: counts stay 0 (unknown), never estimated from the text."""
    server = start_standin(OpenAIStandin, flavor="plain", usage=False)
    engine = OpenAIEngine(make_settings(), base_url=server.base_url)
    result = collect(with_client_clock(engine.chat(chat())))
    t = result.timings
    assert result.content == DEFAULT_REPLY
    assert (t.prompt_tokens, t.output_tokens, t.cached_tokens) == (0, 0, 0)
    assert t.tpot_ms is None and t.decode_tps is None
    assert t.ttft_ms is not None and t.e2e_ms is not None and len(t.chunk_ns) == N_REPLY
    engine.close()


def test_no_usage_but_llama_timings(start_standin, make_settings):
    server = start_standin(OpenAIStandin, flavor="llama-server", usage=False)
    engine = OpenAIEngine(make_settings(), base_url=server.base_url)
    t = collect(engine.chat(chat())).timings
    assert t.output_tokens == N_REPLY
    assert t.prompt_tokens == server.prompt_tokens(server.last().body)
    engine.close()


def test_non_streaming(make_settings, start_standin):
    server = start_standin(OpenAIStandin, flavor="llama-server")
    engine = OpenAIEngine(make_settings(), base_url=server.base_url, stream=False)
    chunks = list(with_client_clock(engine.chat(chat())))
    assert [c.content for c in chunks] == [DEFAULT_REPLY, ""]
    body = server.last("/v1/chat/completions").body
    assert body["stream"] is False and "stream_options" not in body
    t = chunks[-1].result.timings
    assert t.output_tokens == N_REPLY and t.eval_ns is not None and t.first_token_ns is not None
    engine.close()


def test_max_tokens_ends_with_length(engine):
    result = collect(engine.chat(chat(options=Options(num_predict=4))))
    assert result.content == "The quick brown fox" and result.done_reason == "length"
    assert result.timings.output_tokens == 4


# --- what is sent -------------------------------------------------------------------------------------


def test_options_map_to_openai_fields(engine, openai_standin):
    options = Options.from_dict(
        {
            "num_predict": 50,
            "temperature": 0,
            "top_p": 0.9,
            "seed": 7,
            "stop": ["\n\n", "END"],
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "top_k": 40,
            "min_p": 0.05,
            "repeat_penalty": 1.1,
            "num_ctx": 8192,
            "num_thread": 4,
        }
    )
    collect(engine.chat(chat(options=options)))
    body = openai_standin.last("/v1/chat/completions").body
    expected = {
        "max_tokens": 50,
        "temperature": 0,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "repetition_penalty": 1.1,
    }
    assert {k: body[k] for k in expected} == expected
    assert "num_ctx" not in body and "num_thread" not in body and "options" not in body


def test_unlimited_num_predict_is_not_sent(engine, openai_standin):
    collect(engine.chat(chat(options=Options(num_predict=-1))))
    assert "max_tokens" not in openai_standin.last().body


def test_json_format(engine, openai_standin):
    result = collect(engine.chat(chat(format="json")))
    assert openai_standin.last().body["response_format"] == {"type": "json_object"}
    assert isinstance(json.loads(result.content), dict)


def test_schema_format(engine, openai_standin):
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["age", "ok"],
    }
    result = collect(engine.chat(chat(format=schema)))
    assert openai_standin.last().body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    jsonschema.validate(json.loads(result.content), schema)


def test_bad_format_and_option_are_refused_before_sending(engine, openai_standin):
    with pytest.raises(InvalidOptionError):
        collect(engine.chat(chat(format="xml")))
    with pytest.raises(InvalidOptionError, match="bogus"):
        collect(engine.chat(chat(options=Options(extra={"bogus": 1}))))
    assert openai_standin.requests == []


def test_generate_raw_uses_completions(engine, openai_standin):
    prompt = "<|im_start|>user\nhi<|im_end|>\n"
    result = collect(
        with_client_clock(
            engine.generate(GenerateRequest(MODEL, prompt, raw=True, suffix="END", options=Options(num_predict=5)))
        )
    )
    body = openai_standin.last("/v1/completions").body
    assert body["prompt"] == prompt and body["suffix"] == "END" and body["max_tokens"] == 5
    assert body["stream_options"] == {"include_usage": True}
    assert result.content == "The quick brown fox jumps"
    assert result.timings.prompt_tokens == len(split_tokens(prompt))
    assert result.timings.output_tokens == 5


def test_generate_templated_uses_chat(engine, openai_standin):
    collect(engine.generate(GenerateRequest(MODEL, "Write a haiku.", system="You are a poet.")))
    body = openai_standin.last("/v1/chat/completions").body
    assert body["messages"] == [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a haiku."},
    ]


def test_tool_calls_are_assembled_from_fragments(engine, openai_standin):
    openai_standin.tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "C"}}}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = collect(engine.chat(chat("weather?", tools=tools)))
    assert openai_standin.last().body["tools"] == tools
    assert result.tool_calls == [
        {"function": {"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "C"}}, "id": "call_0"}
    ]


def test_tool_history_becomes_openai_messages():
    messages = [
        Message("user", "weather in Toronto and Paris?"),
        Message(
            "assistant",
            "",
            tool_calls=[
                {"function": {"name": "get_weather", "arguments": {"city": "Toronto"}}},
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            ],
        ),
        Message("tool", "11 C", tool_name="get_weather"),
        Message("tool", "15 C", tool_name="get_weather"),
        Message("user", "what is this?", images=["iVBORw0KGgo="]),
    ]
    out = to_openai_messages(messages)
    calls = out[1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"city": "Toronto"}', '{"city": "Paris"}']
    assert all(c["type"] == "function" and c["id"] for c in calls)
    assert [out[2]["tool_call_id"], out[3]["tool_call_id"]] == [calls[0]["id"], calls[1]["id"]]
    assert out[4]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def test_api_key_is_sent(start_standin, make_settings):
    server = start_standin(OpenAIStandin, api_key="sk-test")
    engine = OpenAIEngine(make_settings(), base_url=server.base_url, api_key="sk-test")
    assert collect(engine.chat(chat())).content == DEFAULT_REPLY
    assert server.last().headers["authorization"] == "Bearer sk-test"
    wrong = OpenAIEngine(make_settings(), base_url=server.base_url, api_key="sk-wrong")
    with pytest.raises(InvalidOptionError, match="API key"):
        collect(wrong.chat(chat()))
    engine.close()
    wrong.close()


def test_base_url_without_path_gets_v1(make_settings, openai_standin):
    engine = OpenAIEngine(make_settings(), base_url=openai_standin.url)
    assert engine.base_url == openai_standin.base_url
    assert collect(engine.chat(chat())).content == DEFAULT_REPLY
    engine.close()


def test_closing_early_cancels_cleanly(engine, openai_standin):
    openai_standin.token_delay = 0.01
    stream = with_client_clock(engine.chat(chat()))
    next(stream)
    stream.close()
    assert collect(engine.chat(chat())).content == DEFAULT_REPLY


# --- the rest of the protocol ---------------------------------------------------------------------------


def test_embed(engine, openai_standin):
    emb = engine.embed(MODEL, ["first text", "second one here"])
    body = openai_standin.last("/v1/embeddings").body
    assert body["input"] == ["first text", "second one here"] and body["model"] == MODEL
    assert len(emb.vectors) == 2 and len(emb.vectors[0]) == openai_standin.embedding_dim
    for v in emb.vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6)
    assert emb.prompt_tokens == 5


def test_embeddings_are_normalised_and_ordered(httpserver, make_settings):
    httpserver.expect_request("/v1/embeddings", method="POST").respond_with_json(
        {
            "object": "list",
            "model": "m",
            "data": [
                {"object": "embedding", "index": 1, "embedding": [0.0, 2.0]},
                {"object": "embedding", "index": 0, "embedding": [3.0, 4.0]},
            ],
        }
    )
    engine = OpenAIEngine(make_settings(), base_url=httpserver.url_for("/v1"))
    emb = engine.embed("m", ["a", "b"])
    assert emb.vectors == [[0.6, 0.8], [0.0, 1.0]] and emb.prompt_tokens == 0


def test_list_models_and_info(engine):
    (model,) = engine.list_models()
    assert model.name == MODEL and model.engine == "openai"
    assert model.details["context_length"] == 8192
    assert engine.info(MODEL).name == MODEL
    with pytest.raises(UnknownModelError) as err:
        engine.info("nope")
    assert err.value.available == [MODEL]


def test_llama_server_model_meta(start_standin, make_settings):
    server = start_standin(OpenAIStandin, flavor="llama-server")
    info = OpenAIEngine(make_settings(), base_url=server.base_url).info(MODEL)
    assert info.size_bytes == 91_739_296
    assert info.details["n_ctx_train"] == 8192 and info.details["parameters"] == 134_515_008


@pytest.mark.parametrize("flavor", ["vllm", "llama-server"])
def test_tokenize_with_the_servers_tokenizer(start_standin, make_settings, flavor):
    server = start_standin(OpenAIStandin, flavor=flavor)
    engine = OpenAIEngine(make_settings(), base_url=server.base_url)
    ids = engine.tokenize(MODEL, "hello big world")
    assert len(ids) == 3 and all(isinstance(i, int) for i in ids)
    assert engine.detokenize(MODEL, ids) == "hello big world"
    assert server.last("/detokenize").path == "/detokenize"  # beside /v1, not under it


def test_tokenize_where_the_server_cannot(start_standin, make_settings):
    server = start_standin(OpenAIStandin, flavor="plain")
    engine = OpenAIEngine(make_settings(), base_url=server.base_url)
    with pytest.raises(EngineError, match="no /tokenize endpoint"):
        engine.tokenize(MODEL, "hello")


def test_loaded_is_unknown_and_unload_does_nothing(engine, openai_standin):
    assert engine.loaded() == []
    engine.unload(MODEL)
    assert openai_standin.requests == []


# --- errors -----------------------------------------------------------------------------------------------


def test_unknown_model(engine, openai_standin):
    with pytest.raises(UnknownModelError) as err:
        collect(engine.chat(chat(model="gpt-9")))
    assert err.value.name == "gpt-9" and err.value.available == [MODEL]
    assert openai_standin.base_url in str(err.value)
    with pytest.raises(UnknownModelError):
        engine.embed("gpt-9", ["x"])
    with pytest.raises(UnknownModelError):
        collect(engine.generate(GenerateRequest("gpt-9", "x", raw=True)))


def test_wrong_base_url_is_not_an_unknown_model(make_settings, openai_standin):
    engine = OpenAIEngine(make_settings(), base_url=openai_standin.url + "/api")
    with pytest.raises(EngineError, match="404 Not Found.*check the URL"):
        collect(engine.chat(chat()))


def test_stream_that_stops_before_finishing(httpserver, make_settings):
    """Cleanly closed but unfinished (no finish_reason, no [DONE]): an error, not a short answer."""
    event = {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_data(
        f"data: {json.dumps(event)}\n\n", content_type="text/event-stream"
    )
    engine = OpenAIEngine(make_settings(), base_url=httpserver.url_for("/v1"))
    with pytest.raises(EngineError, match="without finishing"):
        collect(engine.chat(chat(model="m")))


def test_not_json_from_the_server(httpserver, make_settings):
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_data(
        "data: <html>\n\n", content_type="text/event-stream"
    )
    engine = OpenAIEngine(make_settings(), base_url=httpserver.url_for("/v1"))
    with pytest.raises(EngineError, match="not JSON"):
        collect(engine.chat(chat(model="m")))


# --- pieces ------------------------------------------------------------------------------------------------


def test_sse_parser():
    lines = [": comment", "event: message", 'data: {"a":', "data: 1}", "", "", "data:[DONE]", "", "data: tail"]
    assert list(sse_data(iter(lines))) == ['{"a":\n1}', "[DONE]", "tail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad thing", "type": "invalid_request_error"}}, "bad thing"),  # OpenAI
        ({"error": "model 'x' not found"}, "model 'x' not found"),  # Ollama
        (
            {"object": "error", "message": "The model `x` does not exist.", "code": 404},
            "The model `x` does not exist.",
        ),  # vLLM
        ({"detail": "Not Found"}, "Not Found"),  # FastAPI
    ],
)
def test_error_messages_from_any_server(body, message):
    assert error_message(httpx.Response(400, json=body)) == message


def test_error_message_from_plain_text():
    assert error_message(httpx.Response(502, text="Bad Gateway\n")) == "Bad Gateway"


def test_openai_params_leave_defaults_out():
    assert openai_params(Options()) == {}


def test_api_key_comes_from_settings_and_is_never_shown(start_standin, make_settings, monkeypatch, caplog):
    import logging

    from lmgauge.config import load_settings
    from lmgauge.engines import create_engine

    server = start_standin(OpenAIStandin, api_key="sk-secret-123")
    monkeypatch.setenv("LMGAUGE_OPENAI_API_KEY", "sk-secret-123")
    settings = load_settings()
    assert "sk-secret-123" not in repr(settings) and "sk-secret-123" not in str(settings.model_dump(mode="json"))
    caplog.set_level(logging.DEBUG)
    engine = create_engine("openai", settings, server.base_url)
    assert collect(engine.chat(chat())).content == DEFAULT_REPLY
    assert server.last().headers["authorization"] == "Bearer sk-secret-123"
    engine.close()
    monkeypatch.setenv("LMGAUGE_OPENAI_API_KEY", "sk-wrong-456")
    wrong = create_engine("openai", load_settings(), server.base_url)
    with pytest.raises(InvalidOptionError) as refused:
        collect(wrong.chat(chat()))
    assert "sk-wrong-456" not in str(refused.value) and "sk-wrong-456" not in caplog.text
    wrong.close()


def test_tools_and_reasoning_are_forwarded(openai_standin, engine):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = chat("hi", tools=tools)
    request.tool_choice, request.forced_tool, request.think = "required", "f", "high"
    collect(engine.chat(request))
    body = openai_standin.last().body
    assert body["tools"] == tools and body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["reasoning_effort"] == "high"
