"""Gateway pieces that need no server: admission control, Ollama's environment, the context guard,
request parsing."""

from __future__ import annotations

import asyncio

import pytest

from lmgauge.config import load_settings
from lmgauge.errors import ContextOverflowError, EngineBusyError, InvalidOptionError, RequestTimeoutError
from lmgauge.gateway import guard
from lmgauge.gateway.admission import Admission
from lmgauge.gateway.env import BindAddress, parse_ollama_host, serve_settings
from lmgauge.gateway.http import parse_options
from lmgauge.gateway.ollama_api import parse_chat, parse_generate
from lmgauge.gateway.openai_api import parse_chat as openai_chat
from lmgauge.types import ChatRequest, Message

# --- admission --------------------------------------------------------------------------------------


def test_admission_runs_limit_queues_fifo_then_refuses():
    async def scenario():
        a = Admission("m", limit=2, max_queue=2)
        await a.acquire()
        await a.acquire()
        assert (a.active, a.queued) == (2, 0)
        order = []

        async def wait(tag):
            await a.acquire()
            order.append(tag)

        w1 = asyncio.create_task(wait("first"))
        await asyncio.sleep(0)
        w2 = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)
        assert a.queued == 2
        with pytest.raises(EngineBusyError) as busy:
            await a.acquire()
        assert busy.value.http_status == 503
        a.release()
        await asyncio.sleep(0)
        assert order == ["first"] and a.active == 2
        a.release()
        await asyncio.gather(w1, w2)
        assert order == ["first", "second"]
        a.release()
        a.release()
        assert (a.active, a.queued) == (0, 0)

    asyncio.run(scenario())


def test_admission_queue_timeout_gives_up_its_place():
    async def scenario():
        a = Admission("m", limit=1, max_queue=5)
        await a.acquire()
        with pytest.raises(RequestTimeoutError):
            await a.acquire(timeout=0.05)
        assert a.queued == 0
        a.release()
        assert a.active == 0

    asyncio.run(scenario())


# --- Ollama's environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, bind",
    [
        ("0.0.0.0", BindAddress("0.0.0.0", 11434)),
        ("127.0.0.1:8080", BindAddress("127.0.0.1", 8080)),
        ("http://localhost:9000/", BindAddress("localhost", 9000)),
        ("[::1]:7000", BindAddress("::1", 7000)),
    ],
)
def test_ollama_host_is_the_bind_address(value, bind):
    assert parse_ollama_host(value) == bind


def test_ollama_variables_apply_unless_lmgauge_settings_say_otherwise(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:12345")
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "3")
    monkeypatch.setenv("OLLAMA_MAX_QUEUE", "7")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "2048")
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", "10m")
    settings, bind = serve_settings()
    assert bind == BindAddress("127.0.0.1", 12345)
    assert (settings.parallel, settings.gateway.max_queue, settings.num_ctx, settings.keep_alive) == (3, 7, 2048, 600)
    # OLLAMA_HOST is where we listen, so it must not also be where `ollama:` models are sent.
    assert settings.ollama_host == "http://127.0.0.1:11434"

    monkeypatch.setenv("LMGAUGE_PARALLEL", "2")
    monkeypatch.setenv("LMGAUGE_GATEWAY__PORT", "9999")
    monkeypatch.setenv("LMGAUGE_OLLAMA_HOST", "gpu-box:11434")
    settings, bind = serve_settings()
    assert settings.parallel == 2 and bind.port == 9999
    assert settings.ollama_host == "http://gpu-box:11434"
    settings, bind = serve_settings(host="127.0.0.2", port=1)  # command-line flags win over everything
    assert bind == BindAddress("127.0.0.2", 1)


def test_bad_ollama_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "many")
    with pytest.raises(InvalidOptionError, match="OLLAMA_NUM_PARALLEL"):
        serve_settings()


# --- context guard --------------------------------------------------------------------------------------


class WordCounter:
    """Counts one token per word: enough to test the guard's decisions."""

    def prompt_tokens(self, request):
        return sum(len(m.content.split()) for m in request.messages)


def _chat(*texts):
    return ChatRequest(model="m", messages=[Message("user", t) for t in texts])


def test_guard_refuses_what_does_not_fit_and_reports_usage():
    ok = guard.check(WordCounter(), _chat("a b c"), 10, "refuse", None)
    assert ok.header() == {guard.HEADER: "3/10"} and ok.used == pytest.approx(0.3)
    with pytest.raises(ContextOverflowError) as exc:
        guard.check(WordCounter(), _chat("w " * 10), 10, "refuse", None)
    assert exc.value.http_status == 400 and "10 tokens" in str(exc.value)
    assert guard.check(WordCounter(), _chat("a"), None, "refuse", None).header() == {}


def test_guard_compacts_through_the_hook_when_configured():
    def keep_last(messages, budget, count):
        while count(messages) > budget and len(messages) > 1:
            messages = messages[1:]
        return messages

    request = _chat("old " * 8, "new question")
    verdict = guard.check(WordCounter(), request, 10, "compact", keep_last)
    assert verdict.compacted and verdict.prompt_tokens == 2
    assert [m.content for m in request.messages] == ["new question"]
    with pytest.raises(ContextOverflowError, match="without a compactor"):
        guard.check(WordCounter(), _chat("w " * 20), 10, "compact", None)


def test_overflow_policy_comes_from_settings():
    settings = load_settings()
    assert guard.overflow_policy(settings) == "refuse"
    settings.gateway.overflow = "compact"
    assert guard.overflow_policy(settings) == "compact"


# --- request parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "model is required"),
        ({"model": 3}, "model must be a string"),
        ({"model": "m", "messages": "hi"}, "messages must be an array"),
        ({"model": "m", "messages": [{"role": "king", "content": "x"}]}, "role must be one of"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "content must be a string"),
        ({"model": "m", "options": {"temprature": 1}}, "unknown option 'temprature'"),
        ({"model": "m", "options": {"top_p": 7}}, "out of range"),
        ({"model": "m", "format": "yaml"}, "format must be"),
        ({"model": "m", "stream": "yes"}, "stream must be true or false"),
        ({"model": "m", "keep_alive": "forever"}, "invalid duration"),
        ({"model": "m", "think": "maximum"}, "think must be"),
    ],
)
def test_ollama_chat_rejects_bad_fields_by_name(body, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        parse_chat(body)


def test_ollama_generate_fields():
    request, stream = parse_generate(
        {
            "model": "m",
            "prompt": "p",
            "system": "s",
            "raw": True,
            "stream": False,
            "format": {"type": "object"},
            "options": {"num_predict": 4, "stop": "x"},
            "keep_alive": "5m",
        }
    )
    assert (request.prompt, request.system, request.raw, stream) == ("p", "s", True, False)
    assert request.format == {"type": "object"} and request.options.stop == ["x"] and request.keep_alive == 300


def test_openai_fields_become_ollama_options():
    request, stream, usage = openai_chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 7,
            "temperature": 0,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        }
    )
    assert request.options.num_predict == 7 and request.options.temperature == 0 and request.options.stop == ["\n"]
    assert request.format == {"type": "object"} and stream and usage
    assert request.messages[0].content == "hi"
    with pytest.raises(InvalidOptionError, match="n must be 1"):
        openai_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})


def test_non_finite_option_is_refused():
    with pytest.raises(InvalidOptionError):
        parse_options({"temperature": float("inf")})
