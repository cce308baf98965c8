"""The wire layer: lmgauge type -> Ollama/OpenAI JSON -> lmgauge type gives back what went in, for
every message kind, request, whole answer and stream (generated with hypothesis); and no module
outside lmgauge/wire builds or parses those JSON shapes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgauge.errors import InvalidOptionError
from lmgauge.gateway import ollama_api, openai_api
from lmgauge.types import ChatRequest, Chunk, Message, Options, Result, Timings
from lmgauge.wire import ollama as ow
from lmgauge.wire import openai as oa

text = st.text(max_size=40)
name = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
arguments = st.dictionaries(name, json_value, max_size=4)
call_ids = st.from_regex(r"call_[a-z0-9]{4,12}", fullmatch=True)


@st.composite
def tool_calls(draw, with_ids: bool) -> list[dict]:
    calls = []
    for _ in range(draw(st.integers(1, 3))):
        call = {"function": {"name": draw(name), "arguments": draw(arguments)}}
        if with_ids:
            call["id"] = draw(call_ids)
        calls.append(call)
    return calls


@st.composite
def conversations(draw, openai: bool) -> list[Message]:
    """system / user / assistant (text, thinking, tool calls) / tool results, in a plausible order."""
    out = [Message("system", draw(text))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        out.append(Message("user", draw(text)))
        if draw(st.booleans()):
            calls = draw(tool_calls(with_ids=openai))
            out.append(Message("assistant", draw(text), tool_calls=calls, thinking=draw(text)))
            for call in calls:
                out.append(Message("tool", draw(text), tool_name=call["function"]["name"], tool_call_id=call.get("id")))
        out.append(Message("assistant", draw(text), thinking=draw(text)))
    return out


@settings(max_examples=60, deadline=None)
@given(conversations(openai=False))
def test_ollama_messages_round_trip(messages):
    wire = orjson.loads(orjson.dumps([ow.message_to_wire(m) for m in messages]))
    assert ow.messages_from_wire(wire) == messages


@settings(max_examples=60, deadline=None)
@given(conversations(openai=True))
def test_openai_messages_round_trip(messages):
    wire = orjson.loads(orjson.dumps(oa.messages_to_wire(messages)))
    for m in wire:
        for call in m.get("tool_calls") or []:
            assert isinstance(call["function"]["arguments"], str)  # OpenAI's JSON-string arguments
    assert oa.messages_from_wire(wire) == messages


def test_openai_tool_results_are_linked_and_named_by_call_id():
    messages = [
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=[{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]),
        Message("tool", "rain"),
    ]
    wire = oa.messages_to_wire(messages)
    assert wire[2]["tool_call_id"] == wire[1]["tool_calls"][0]["id"]
    back = oa.messages_from_wire(wire)
    assert back[2].tool_name == "weather"  # looked up from the call, for the chat template


@settings(max_examples=40, deadline=None)
@given(
    conversations(openai=False),
    st.sampled_from([None, True, False, "low", "high"]),
    st.lists(name, min_size=1, max_size=3, unique=True),
)
def test_ollama_chat_request_round_trips_through_the_gateway_parser(messages, think, tool_names):
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in tool_names]
    request = ChatRequest(
        model="m",
        messages=messages,
        options=Options(temperature=0.5, stop=["x"]),
        format={"type": "object"},
        tools=tools,
        keep_alive=60.0,
        think=think,
    )
    back, stream = ollama_api.parse_chat(orjson.loads(orjson.dumps(ow.chat_body(request, "m", True))))
    assert back == request and stream


@settings(max_examples=40, deadline=None)
@given(
    conversations(openai=True),
    st.sampled_from([None, False, "low", "medium", "high"]),
    st.sampled_from(["auto", "none", "required", "forced"]),
)
def test_openai_chat_request_round_trips_through_the_gateway_parser(messages, think, choice):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    forced = "f" if choice == "forced" else None
    request = ChatRequest(
        model="m",
        messages=messages,
        options=Options(temperature=0.5, num_predict=9, stop=["x"]),
        format="json",
        tools=tools,
        tool_choice="required" if forced else choice,
        forced_tool=forced,
        think=think,
    )
    back, stream, usage = openai_api.parse_chat(orjson.loads(orjson.dumps(oa.chat_body(request, "m", True))))
    assert back == request and stream and usage


results = st.builds(
    Result,
    model=st.just("m"),
    content=text,
    done_reason=st.sampled_from(["stop", "length"]),
    timings=st.builds(
        Timings,
        prompt_tokens=st.integers(0, 10**5),
        output_tokens=st.integers(0, 10**5),
        load_ns=st.integers(0, 10**12),
        prompt_eval_ns=st.integers(0, 10**12),
        eval_ns=st.integers(0, 10**12),
        total_ns=st.integers(0, 10**12),
    ),
    tool_calls=st.one_of(st.none(), tool_calls(with_ids=True)),
    thinking=text,
)


def _same(a: Result, b: Result, timings: tuple[str, ...]) -> None:
    assert (a.content, a.thinking, a.done_reason) == (b.content, b.thinking, b.done_reason)
    assert [getattr(a.timings, f) for f in timings] == [getattr(b.timings, f) for f in timings]


OLLAMA_TIMINGS = ("prompt_tokens", "output_tokens", "load_ns", "prompt_eval_ns", "eval_ns", "total_ns")


@settings(max_examples=60, deadline=None)
@given(results)
def test_ollama_whole_answer_round_trip(result):
    obj = orjson.loads(orjson.dumps(ow.whole_answer("chat", "m", result)))
    chunks = ow.StreamReader("m").feed(obj)
    back = chunks[-1].result
    _same(result, back, OLLAMA_TIMINGS)
    assert back.tool_calls == result.tool_calls


@settings(max_examples=60, deadline=None)
@given(results, st.lists(st.tuples(text, text), max_size=5), st.booleans())
def test_ollama_stream_round_trip(result, pieces, calls_in_chunks):
    """What an engine streams, through NDJSON and back: text, thinking, calls, the final stats."""
    result.content, result.thinking = "".join(c for c, _ in pieces), "".join(t for _, t in pieces)
    chunks = [Chunk(content=c, thinking=t) for c, t in pieces]
    if calls_in_chunks and result.tool_calls:
        chunks.append(Chunk(tool_calls=result.tool_calls))
    chunks.append(Chunk(done=True, result=result))
    writer, reader = ow.StreamWriter("chat", "m"), ow.StreamReader("m")
    out = [c for chunk in chunks for obj in writer.objects(chunk) for c in reader.feed(orjson.loads(orjson.dumps(obj)))]
    back = out[-1].result
    assert "".join(c.content for c in out) == result.content
    _same(result, back, OLLAMA_TIMINGS)
    assert back.tool_calls == result.tool_calls  # sent once, whichever way the engine reported them


@settings(max_examples=60, deadline=None)
@given(results)
def test_openai_whole_answer_round_trip(result):
    obj = orjson.loads(orjson.dumps(oa.chat_completion("chatcmpl-1", "m", result)))
    reader = oa.StreamReader("m")
    reader.feed(obj)
    back = reader.result()
    _same(result, back, ("prompt_tokens", "output_tokens"))
    assert back.tool_calls == result.tool_calls


@settings(max_examples=60, deadline=None)
@given(results, st.lists(st.tuples(text, text), max_size=5))
def test_openai_stream_round_trip(result, pieces):
    result.content, result.thinking = "".join(c for c, _ in pieces), "".join(t for _, t in pieces)
    chunks = [Chunk(content=c, thinking=t) for c, t in pieces] + [Chunk(done=True, result=result)]
    writer, reader = oa.StreamWriter("chatcmpl-1", "m", "chat", True), oa.StreamReader("m")
    for chunk in chunks:
        for event in writer.events(chunk):
            reader.feed(orjson.loads(orjson.dumps(event)))
    back = reader.result()
    _same(result, back, ("prompt_tokens", "output_tokens"))
    assert back.tool_calls == result.tool_calls  # reassembled from id/name heads + argument fragments


def test_openai_stream_tool_calls_are_shaped_as_openai_sends_them():
    calls = [
        {"id": "call_a", "function": {"name": "f", "arguments": {"x": 1}}},
        {"id": "call_b", "function": {"name": "g", "arguments": {}}},
    ]
    result = Result(model="m", content="", done_reason="stop", timings=Timings(), tool_calls=calls)
    writer = oa.StreamWriter("id", "m", "chat", False)
    events = writer.events(Chunk(tool_calls=calls[:1])) + writer.events(Chunk(done=True, result=result))
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0]["role"] == "assistant" and "role" not in deltas[1]
    assert deltas[0]["tool_calls"] == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}
    ]
    assert deltas[1]["tool_calls"] == [{"index": 0, "function": {"arguments": '{"x": 1}'}}]
    assert deltas[2]["tool_calls"][0]["index"] == 1 and deltas[2]["tool_calls"][0]["id"] == "call_b"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_assembler_keeps_a_malformed_call_as_the_servers_text():
    asm = oa.ToolCallAssembler()
    asm.add({"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"x": '}})
    asm.add({"index": 0, "function": {"arguments": "oops"}})
    assert asm.calls() == [{"function": {"name": "f", "arguments": {"_raw": '{"x": oops'}}, "id": "c"}]


@pytest.mark.parametrize(
    "value, fragment",
    [
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}], "name"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]}], "not valid JSON"),
        ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}], "must be an object"),
        ([{"role": "tool", "content": "x", "tool_call_id": 7}], "tool_call_id"),
        ([{"role": "assistant", "thinking": 3}], "thinking"),
    ],
)
def test_malformed_messages_are_refused_by_field(value, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        ow.messages_from_wire(value)


@pytest.mark.parametrize(
    "choice, fragment",
    [
        ({"type": "function", "function": {"name": "nope"}}, "not in tools"),
        ("always", "tool_choice must be"),
    ],
)
def test_bad_tool_choice_is_refused(choice, fragment):
    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(InvalidOptionError, match=fragment):
        oa.tool_choice_from_wire(choice, tools)


# --- nobody else speaks the wire formats ----------------------------------------------------------

# Keys that only exist in Ollama's or OpenAI's JSON (lmgauge's own types use other names).
WIRE_KEYS = {
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
    "load_duration",
    "total_duration",
    "choices",
    "finish_reason",
    "reasoning_content",
    "response_format",
    "completion_tokens",
    "prompt_tokens_details",
    "stream_options",
    "chat.completion",
    "chat.completion.chunk",
    "reasoning_effort",
    "tool_choice",
}
SRC = Path(__file__).resolve().parent.parent / "src" / "lmgauge"
# Same spelling, not the wire format: the variable chat templates read for an effort level.
NOT_WIRE = {("engines/thinking.py", "reasoning_effort")}


def _wire_strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in WIRE_KEYS
        and id(node) not in docstrings
    ]


def test_no_module_outside_wire_builds_or_parses_wire_json():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "wire" in path.relative_to(SRC).parts:
            continue
        offenders += [
            f"{path.relative_to(SRC)}:{line}: {key!r}"
            for line, key in _wire_strings(path)
            if (str(path.relative_to(SRC)), key) not in NOT_WIRE
        ]
    assert offenders == [], "Ollama/OpenAI JSON handled outside lmgauge/wire:\n" + "\n".join(offenders)


def test_the_wire_check_catches_a_stray_key(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text('def f(obj):\n    return obj.get("prompt_eval_count"), {"choices": []}\n')
    assert [key for _, key in _wire_strings(stray)] == ["prompt_eval_count", "choices"]
    assert json.loads(json.dumps(sorted(WIRE_KEYS)))  # the set itself is plain strings
