"""Tool calling on the embedded engine: the syntax read from the template, the streaming parser,
the lazy grammar's activation, and SmolLM2 (a model never trained for tools) made to produce
schema-valid calls by the grammar."""

from __future__ import annotations

import ctypes

import jsonschema
import numpy as np
import pytest

from lmgauge.engines import toolcalls
from lmgauge.engines.base import collect
from lmgauge.engines.chat_template import ChatTemplate
from lmgauge.errors import InvalidOptionError
from lmgauge.types import ChatRequest, Message, Options

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, ADD, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

HERMES = toolcalls.ToolSyntax("hermes", "<tool_call>", "</tool_call>", "arguments", True)
GENERIC = toolcalls.ToolSyntax("generic", None, None, "arguments", False)
MISTRAL = toolcalls.ToolSyntax("mistral", "[TOOL_CALLS]", None, "arguments", True)
LLAMA3 = toolcalls.ToolSyntax("llama3", None, None, "parameters", True)
NAMES = {"get_weather", "add", "search_web"}


def assert_valid(call: dict) -> None:
    name = call["function"]["name"]
    assert name in SCHEMAS, call
    jsonschema.validate(call["function"]["arguments"], SCHEMAS[name])
    assert call["id"].startswith("call_")


# --- the syntax comes from the template --------------------------------------------------------------


@pytest.mark.parametrize(
    "source, family",
    [
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>", "hermes"),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
        ("<|start_header_id|>{% if tools %}{{ tools }}{% endif %}", "llama3"),
        ("<|start_header_id|>user<|end_header_id|>", "generic"),  # a Llama template without tools
        (None, "generic"),
    ],
)
def test_syntax_is_read_from_the_template(source, family):
    assert toolcalls.syntax_for(ChatTemplate(source)).name == family


def test_a_template_without_tools_gets_them_in_the_system_message():
    messages = [
        Message("system", "Be brief."),
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]),
        Message("tool", "rain", tool_name="get_weather"),
    ]
    out = toolcalls.prepare_messages(messages, TOOLS, GENERIC)
    assert out[0].content.startswith("Be brief.") and '"get_weather"' in out[0].content
    assert out[2].content == '{"name": "get_weather", "arguments": {"city": "Oslo"}}'  # the call stays visible
    assert out[3] == messages[3]


# --- parsing -------------------------------------------------------------------------------------------


def feed_all(parser: toolcalls.ToolCallParser, pieces: list[str]) -> tuple[str, list[dict]]:
    text, calls = "", []
    for piece in pieces:
        t, c = parser.feed(piece)
        text, calls = text + t, calls + c
    t, c = parser.finish()
    return text + t, calls + c


def pieces_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_hermes_calls_are_taken_out_of_the_stream_whatever_the_split(size):
    text = (
        'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}\n</tool_call>'
    )
    shown, calls = feed_all(toolcalls.ToolCallParser(HERMES, NAMES), pieces_of(text, size))
    assert shown == "Let me check. "
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("add", {"a": 1, "b": 2}),
    ]
    assert len({c["id"] for c in calls}) == 2


def test_a_call_is_streamed_as_soon_as_it_closes():
    parser = toolcalls.ToolCallParser(HERMES, NAMES)
    assert parser.feed("<tool_") == ("", [])  # could be a call: held back
    text, calls = parser.feed('call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    assert text == "" and calls[0]["function"]["name"] == "add"


@pytest.mark.parametrize(
    "syntax, text",
    [
        (GENERIC, '{"name": "search_web", "arguments": {"query": "llamas"}}'),
        (LLAMA3, '<|python_tag|>{"name": "search_web", "parameters": {"query": "llamas"}}'),
        (MISTRAL, '[TOOL_CALLS][{"name": "search_web", "arguments": {"query": "llamas"}}]'),
        (HERMES, '<tool_call>{"name": "search_web", "arguments": {"query": "llamas"}}'),  # no closing tag
    ],
)
def test_each_family_parses(syntax, text):
    shown, calls = feed_all(toolcalls.ToolCallParser(syntax, NAMES), pieces_of(text, 4))
    assert shown == "" and calls[0]["function"] == {"name": "search_web", "arguments": {"query": "llamas"}}


@pytest.mark.parametrize(
    "syntax, text",
    [
        (HERMES, "<tool_call>{not json}</tool_call>"),
        (HERMES, '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),  # not an offered tool
        (GENERIC, '{"answer": 42}'),  # JSON that is not a call
        (GENERIC, "Just text, no call."),
    ],
)
def test_what_is_not_a_call_is_given_back_as_text(syntax, text):
    shown, calls = feed_all(toolcalls.ToolCallParser(syntax, NAMES), pieces_of(text, 5))
    assert shown == text and calls == []


# --- grammar -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(smollm2_path):
    import llama_cpp.llama_cpp as L

    from lmgauge.engines.llamacpp import _init_backend

    _init_backend()
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(smollm2_path.encode(), params)
    yield L.llama_model_get_vocab(model)
    L.llama_model_free(model)


def allowed(grammar, vocab, text: str) -> bool:
    """Does the grammar accept the next token(s) of text (checked one token at a time)?"""
    import llama_cpp.llama_cpp as L

    from lmgauge.engines.llamacpp import tokenize

    one = np.zeros(1, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    for token in tokenize(vocab, text, False):
        one["id"], one["logit"] = token, 1.0
        arr = L.llama_token_data_array(data=one.ctypes.data_as(L.llama_token_data_p), size=1, selected=-1, sorted=False)
        L.llama_sampler_apply(grammar, ctypes.byref(arr))
        if not np.isfinite(one["logit"][0]):
            return False
        L.llama_sampler_accept(grammar, token)
    return True


def test_lazy_grammar_wakes_when_the_call_starts_and_then_holds(vocab):
    from lmgauge.engines.llamacpp import tokenize

    lazy = toolcalls.LazyGrammar(vocab, toolcalls.call_grammar(TOOLS, HERMES, lazy=True), HERMES)
    grammar = None
    for token in tokenize(vocab, "Sure, I will look that up. <tool_call>", False):
        assert grammar is None  # free text before the call: nothing constrained
        grammar = lazy.observe(token)
    assert grammar is not None
    assert allowed(grammar, vocab, '\n{"name": "get_weather", "arguments": {"city": "Oslo"')
    assert not allowed(grammar, vocab, ', "colour": 1')  # not in the schema: refused


@pytest.mark.parametrize("syntax", [HERMES, GENERIC, MISTRAL, LLAMA3])
@pytest.mark.parametrize("opening", ['```json\n{"name"', '  {"name"', '```json\n{\n  "name"'])
def test_lazy_grammar_wakes_for_a_call_the_answer_opens_with(vocab, syntax, opening):
    """Qwen2.5-Coder 0.5B writes its calls as ```json {"name", ...} ``` rather than in its template's
    <tool_call> tags: the grammar wakes on that opening too, and then holds the call to its schema
    and the block to its closing fence. Pretty-printed calls too (a newline and an indent inside
    the object): the converter's one-optional-space rule refused them, leaving the call unconstrained."""
    from lmgauge.engines.llamacpp import tokenize

    lazy = toolcalls.LazyGrammar(vocab, toolcalls.call_grammar(TOOLS, syntax, lazy=True), syntax)
    grammar = None
    for token in tokenize(vocab, opening, False):
        assert grammar is None
        grammar = lazy.observe(token)
    assert grammar is not None
    key = syntax.args_key
    assert allowed(grammar, vocab, f': "add", "{key}": {{"a": 2, "b": 3}}}}')
    assert not allowed(grammar, vocab, ', "c": 1')  # not in the schema: refused
    if opening.startswith("```"):
        assert allowed(grammar, vocab, "\n```")


def test_lazy_grammar_stays_asleep_for_a_code_block_that_is_not_a_call(vocab):
    from lmgauge.engines.llamacpp import tokenize

    lazy = toolcalls.LazyGrammar(vocab, toolcalls.call_grammar(TOOLS, HERMES, lazy=True), HERMES)
    assert all(lazy.observe(t) is None for t in tokenize(vocab, '```json\n{"city": "Oslo"}\n```', False))
    woke = [lazy.observe(t) for t in tokenize(vocab, " Now the call: <tool_call>", False)]
    assert woke[-1] is not None and not any(woke[:-1])  # its own tags still start a call later


def test_lazy_grammar_stays_asleep_for_an_answer_that_is_text(vocab):
    from lmgauge.engines.llamacpp import tokenize

    lazy = toolcalls.LazyGrammar(vocab, toolcalls.call_grammar(TOOLS, GENERIC, lazy=True), GENERIC)
    assert all(lazy.observe(t) is None for t in tokenize(vocab, 'The answer is {"name": 1}', False))
    assert lazy.done


def test_a_forced_function_must_exist():
    with pytest.raises(InvalidOptionError, match="not among the tools"):
        toolcalls.call_grammar(TOOLS, GENERIC, only="nope")


# --- SmolLM2: calls it was never trained to make -------------------------------------------------------

PROMPTS = [
    "What's the weather in {}?",
    "Is it raining in {} right now?",
    "How hot is it in {} today?",
    "Add {} and 17.",
    "What is {} plus 5?",
    "Search the web for {}.",
    "Find me articles about {}.",
    "I need the temperature in {}, in fahrenheit.",
    "Look up {} online.",
    "Sum 3 and {}.",
]
FILLERS = ["Paris", "Tokyo", "42", "llamas", "Lagos", "quantum computing", "7", "Reykjavik", "the Moon", "1999"]


@pytest.mark.integration
def test_required_tool_choice_makes_fifty_schema_valid_calls_on_smollm2(llama_engine, smollm2_path):
    prompts = [p.format(f) for p in PROMPTS for f in FILLERS[:5]]
    assert len(set(prompts)) == 50
    failures = []
    for prompt in prompts:
        result = collect(
            llama_engine.chat(
                ChatRequest(
                    model=smollm2_path,
                    messages=[Message("user", prompt)],
                    tools=TOOLS,
                    tool_choice="required",
                    options=Options(temperature=0, num_predict=96),
                )
            )
        )
        try:
            assert result.tool_calls, f"no call: {result.content!r} ({result.done_reason})"
            for call in result.tool_calls:
                assert_valid(call)
        except (AssertionError, jsonschema.ValidationError) as exc:
            failures.append(f"{prompt!r}: {exc}")
    assert failures == []


@pytest.mark.integration
def test_a_named_function_is_the_one_called_and_none_calls_nothing(llama_engine, smollm2_path):
    ask = [Message("user", "What's the weather in Paris?")]
    forced = collect(
        llama_engine.chat(
            ChatRequest(
                model=smollm2_path,
                messages=ask,
                tools=TOOLS,
                tool_choice="required",
                forced_tool="search_web",
                options=Options(temperature=0, num_predict=64),
            )
        )
    )
    assert {c["function"]["name"] for c in forced.tool_calls} == {"search_web"}
    none = collect(
        llama_engine.chat(
            ChatRequest(
                model=smollm2_path,
                messages=ask,
                tools=TOOLS,
                tool_choice="none",
                options=Options(temperature=0, num_predict=16),
            )
        )
    )
    assert none.tool_calls is None and none.content


@pytest.mark.integration
def test_calls_stream_in_their_own_chunk_and_results_go_back(llama_engine, smollm2_path):
    ask = [Message("user", "What's the weather in Oslo?")]
    chunks = list(
        llama_engine.chat(
            ChatRequest(
                model=smollm2_path,
                messages=ask,
                tools=[WEATHER],
                tool_choice="required",
                options=Options(temperature=0, num_predict=64),
            )
        )
    )
    streamed = [c for chunk in chunks if chunk.tool_calls for c in chunk.tool_calls]
    final = chunks[-1].result
    assert streamed and streamed == final.tool_calls and final.content == ""
    follow_up = ask + [
        final.message,
        Message("tool", "rain, 7 degrees", tool_name="get_weather", tool_call_id=streamed[0]["id"]),
    ]
    answer = collect(
        llama_engine.chat(
            ChatRequest(
                model=smollm2_path, messages=follow_up, tools=[WEATHER], options=Options(temperature=0, num_predict=24)
            )
        )
    )
    assert answer.content or answer.tool_calls
    prompt = llama_engine.detokenize(smollm2_path, llama_engine.chat_tokens(smollm2_path, follow_up, [WEATHER]))
    assert "rain, 7 degrees" in prompt and '"get_weather"' in prompt  # the call and its result, both shown


@pytest.mark.parametrize("syntax", [HERMES, GENERIC, MISTRAL])
def test_a_call_written_as_a_json_block_is_a_call(syntax):
    """Qwen2.5-Coder 0.5B answers a tool request with ```json {"name", "arguments"} ``` instead of
    its template's <tool_call> tags: the answer is held and parsed as a call."""
    text = '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris", "unit": "celsius"}\n}\n```'
    shown, calls = feed_all(toolcalls.ToolCallParser(syntax, NAMES), pieces_of(text, 3))
    assert shown == "" and calls[0]["function"] == {
        "name": "get_weather",
        "arguments": {"city": "Paris", "unit": "celsius"},
    }


def test_a_code_block_that_is_not_a_call_streams_as_text():
    parser = toolcalls.ToolCallParser(HERMES, NAMES)
    assert parser.feed("```python\nprint(1)") == ("```python\nprint(1)", [])  # not held: not JSON
    assert feed_all(toolcalls.ToolCallParser(HERMES, NAMES), ['```json\n{"a": 1}\n```']) == (
        '```json\n{"a": 1}\n```',
        [],
    )
