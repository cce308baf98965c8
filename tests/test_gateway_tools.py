"""Tool calling through `lmgauge serve` with the embedded engine, by the real clients, unchanged:
the openai client (streaming and not) on SmolLM2 with tool_choice required (the grammar makes a
model never trained for tools call correctly), and on Qwen2.5 (tool-trained, extra_models) the
official ollama client with tools=[a Python function], the openai client with tool_choice auto
and LangChain's ChatOllama.bind_tools. Each gets a structured call whose arguments validate,
runs it, sends the result back and gets a final answer."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lmgauge.config import Settings
from support.gateway_server import GatewayServer

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
      city: The city
    """
    return f"sunny, 21 degrees celsius in {city}"


def run_call(call_name: str, arguments: dict) -> str:
    assert call_name == "get_weather"
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    return get_weather(**arguments)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from conftest import EXTRA_MODEL_FILES, EXTRA_MODELS_DIR

    # The alias is only used by the extra_models tests, which check the file is there first.
    aliases = {"qwen-tools": str(EXTRA_MODELS_DIR / EXTRA_MODEL_FILES["qwen-1.5b"])}
    settings = Settings(home=tmp_path_factory.mktemp("tools-gateway"), keep_alive=-1, aliases=aliases)
    with GatewayServer(settings) as server:
        yield server


@pytest.fixture
def qwen(extra_model):
    extra_model("qwen-1.5b")  # fails with the command to fetch it when missing
    return "qwen-tools"


def openai_client(gateway):
    import openai

    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", timeout=600)


def openai_round_trip(client, model: str, stream: bool, **kwargs) -> tuple[dict, str]:
    """Ask, assemble the call as OpenAI's client does, run it, send the result, get the answer."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    opts = dict(temperature=0, max_tokens=96, tools=[WEATHER], **kwargs)
    if stream:
        calls: dict[int, dict] = {}
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **opts):
            if not chunk.choices:
                continue
            for delta in chunk.choices[0].delta.tool_calls or []:
                slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += delta.id or ""
                slot["name"] += (delta.function.name or "") if delta.function else ""
                slot["arguments"] += (delta.function.arguments or "") if delta.function else ""
        call = calls[0]
    else:
        answer = client.chat.completions.create(model=model, messages=messages, **opts)
        assert answer.choices[0].finish_reason == "tool_calls"
        tc = answer.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    arguments = json.loads(call["arguments"])
    result = run_call(call["name"], arguments)
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]
    final = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=48, tools=[WEATHER], tool_choice="none"
    )
    return arguments, final.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_gets_a_valid_call_from_smollm2_with_tool_choice_required(gateway, stream):
    arguments, answer = openai_round_trip(openai_client(gateway), "smollm2", stream, tool_choice="required")
    assert arguments["city"] and answer.strip()


@pytest.mark.extra_models
@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_tool_loop_on_qwen(gateway, qwen, stream):
    arguments, answer = openai_round_trip(openai_client(gateway), qwen, stream)
    assert arguments == {"city": "Paris"} and answer.strip()


@pytest.mark.extra_models
def test_official_ollama_client_with_a_python_function_on_qwen(gateway, qwen):
    import ollama

    client = ollama.Client(host=gateway.url, timeout=600)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    response = client.chat(model="qwen-tools", messages=messages, tools=[get_weather], options={"temperature": 0})
    calls = response.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    output = run_call(calls[0].function.name, dict(calls[0].function.arguments))
    messages += [response.message, {"role": "tool", "content": output, "tool_name": "get_weather"}]
    final = client.chat(model="qwen-tools", messages=messages, options={"temperature": 0, "num_predict": 48})
    assert final.message.content.strip()
    streamed = [
        c
        for c in client.chat(
            model="qwen-tools", messages=messages[:1], tools=[get_weather], options={"temperature": 0}, stream=True
        )
        if c.message.tool_calls
    ]
    assert len(streamed) == 1 and streamed[0].message.tool_calls[0].function.arguments == {"city": "Paris"}


@pytest.mark.extra_models
def test_langchain_chat_ollama_bind_tools_on_qwen(gateway, qwen):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model="qwen-tools", base_url=gateway.url, temperature=0).bind_tools([get_weather])
    messages = [HumanMessage("What is the weather in Paris?")]
    ai = llm.invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    output = run_call(ai.tool_calls[0]["name"], ai.tool_calls[0]["args"])
    messages += [ai, ToolMessage(output, tool_call_id=ai.tool_calls[0]["id"])]
    final = llm.invoke(messages)
    assert final.content.strip()
