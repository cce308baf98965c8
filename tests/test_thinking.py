"""Thinking: the reasoning apart from the answer, streamed separately; `think` passed to templates
that take it and refused (400) by models whose template does not think; an upstream's thinking
kept by the Ollama engine and carried through both APIs."""

from __future__ import annotations

import httpx
import pytest

from lmgauge.engines.base import collect
from lmgauge.engines.chat_template import ChatTemplate
from lmgauge.engines.ollama import OllamaEngine
from lmgauge.engines.thinking import ThinkingSplitter, template_thinks, template_variables
from lmgauge.errors import InvalidOptionError
from lmgauge.types import ChatRequest, Message, Options

# A Qwen3-style template: <think> in the history, and `enable_thinking=false` closes an empty block.
QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% if reasoning_effort is defined %}[effort {{ reasoning_effort }}]{% endif %}{% endif %}"
)
PROMPT_OPENS = "{% for m in messages %}{{ m.content }}{% endfor %}<|assistant|><think>\n"


def split_all(splitter: ThinkingSplitter, text: str, size: int) -> tuple[str, str]:
    thinking, answer = "", ""
    for i in range(0, len(text), size):
        t, a = splitter.feed(text[i : i + size])
        thinking, answer = thinking + t, answer + a
    t, a = splitter.finish()
    return thinking + t, answer + a


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_reasoning_is_taken_apart_whatever_the_split(size):
    text = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello there!"
    assert split_all(ThinkingSplitter(), text, size) == ("The user greets me.\nI greet back.\n", "Hello there!")


def test_an_answer_without_a_think_block_is_all_answer():
    assert split_all(ThinkingSplitter(), "Hello <think> is just a word here", 3) == (
        "",
        "Hello <think> is just a word here",
    )


def test_a_prompt_that_opens_the_block_starts_in_thinking():
    splitter = ThinkingSplitter.for_prompt("...<|assistant|><think>\n")
    assert split_all(splitter, "hmm, 2+2 is 4</think>4", 4) == ("hmm, 2+2 is 4", "4")


def test_cut_off_reasoning_stays_reasoning():
    assert split_all(ThinkingSplitter(), "<think>still going", 3) == ("still going", "")


def test_think_is_passed_to_templates_that_take_it():
    template = ChatTemplate(QWEN3_LIKE)
    assert template_thinks(template) and template_thinks(ChatTemplate(PROMPT_OPENS))
    hi = [Message("user", "hi")]
    off = template.render(hi, **template_variables(template, False))
    assert off.endswith("<think>\n\n</think>\n\n")
    assert "<think>" not in template.render(hi, **template_variables(template, True))
    assert template.render(hi, **template_variables(template, "high")).endswith("[effort high]")
    assert template_variables(template, None) == {}


@pytest.mark.parametrize("think", [True, "low"])
def test_a_template_without_thinking_refuses_think(think):
    with pytest.raises(InvalidOptionError, match="does not support thinking"):
        template_variables(ChatTemplate(None), think)
    assert template_variables(ChatTemplate(None), False) == {}  # not thinking is always possible


@pytest.mark.integration
def test_smollm2_refuses_think_and_answers_without_it(llama_engine, smollm2_path):
    ask = [Message("user", "hi")]
    with pytest.raises(InvalidOptionError, match="does not support thinking"):
        collect(llama_engine.chat(ChatRequest(model=smollm2_path, messages=ask, think=True)))
    result = collect(
        llama_engine.chat(
            ChatRequest(model=smollm2_path, messages=ask, think=False, options=Options(temperature=0, num_predict=4))
        )
    )
    assert result.content and result.thinking == "" and result.timings.thinking_tokens == 0


def test_the_ollama_engine_keeps_an_upstreams_thinking(start_standin, make_settings):
    from support.standins import OllamaStandin

    server = start_standin(OllamaStandin, thinking="Let me think about the sky.")
    for stream in (True, False):
        engine = OllamaEngine(make_settings(), host=server.url, stream=stream)
        chunks = list(engine.chat(ChatRequest(model="standin", messages=[Message("user", "why?")], think=True)))
        result = collect(iter(chunks))
        assert result.thinking == "Let me think about the sky." and result.content
        assert server.last().body["think"] is True
        if stream:
            assert chunks[0].thinking and not chunks[0].content  # streamed apart from the answer
        engine.close()
    engine = OllamaEngine(make_settings(), host=server.url)
    result = collect(engine.chat(ChatRequest(model="standin", messages=[Message("user", "why?")], think=False)))
    assert result.thinking == "" and server.last().body["think"] is False
    engine.close()


@pytest.mark.integration
def test_gateway_carries_thinking_to_both_apis_and_refuses_it_for_smollm2(tmp_path, start_standin):
    from lmgauge.config import GatewaySettings, Settings, UpstreamSettings
    from support.gateway_server import GatewayServer
    from support.standins import OllamaStandin

    upstream = start_standin(OllamaStandin, thinking="Rayleigh scattering, probably.")
    settings = Settings(
        home=tmp_path,
        keep_alive=-1,
        gateway=GatewaySettings(upstreams=[UpstreamSettings(model="thinker", target="standin", urls=[upstream.url])]),
    )
    with GatewayServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        ask = [{"role": "user", "content": "why is the sky blue?"}]
        whole = http.post(
            "/api/chat", json={"model": "thinker", "messages": ask, "think": True, "stream": False}
        ).json()
        assert whole["message"]["thinking"] == "Rayleigh scattering, probably."
        lines = http.post("/api/chat", json={"model": "thinker", "messages": ask, "think": "high"}).text.splitlines()
        assert '"thinking":"Rayleigh scattering, probably."' in lines[0]
        import openai

        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
        chat = client.chat.completions.create(model="thinker", messages=ask, reasoning_effort="low")
        assert chat.choices[0].message.model_extra["reasoning_content"] == "Rayleigh scattering, probably."
        streamed = client.chat.completions.create(model="thinker", messages=ask, reasoning_effort="low", stream=True)
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in streamed if c.choices
        )
        assert reasoning == "Rayleigh scattering, probably."
        refused = http.post("/api/chat", json={"model": "smollm2", "messages": ask, "think": True, "stream": False})
        assert refused.status_code == 400 and "does not support thinking" in refused.json()["error"]


def test_thinking_and_tool_choice_are_part_of_the_cache_key():
    from lmgauge.cache import request_key

    base = ChatRequest(model="m", messages=[Message("user", "hi")])
    variants = [ChatRequest(model="m", messages=base.messages, think=t) for t in (True, False, "high")]
    variants.append(ChatRequest(model="m", messages=base.messages, tool_choice="required"))
    keys = {request_key(r) for r in [base, *variants]}
    assert len(keys) == 5
