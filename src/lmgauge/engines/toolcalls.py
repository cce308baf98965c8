"""Tool calling for the embedded engine: which syntax the model writes calls in, a grammar that
makes every call parse and match its tool's JSON schema, and a streaming parser that takes the
calls out of the text.

The syntax is read from the GGUF's chat template, never guessed from the model's name (as
llama.cpp's common/chat.cpp does):

- Hermes / Qwen 2.5+: the template mentions `<tool_call>`: calls are
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call;
- Mistral: `[TOOL_CALLS]` followed by a JSON array of {"name", "arguments"};
- Llama 3.x: a `<|start_header_id|>` template that renders tools: the answer is one JSON object
  {"name", "parameters"} (optionally after `<|python_tag|>`);
- anything else (a template that knows nothing of tools, like SmolLM2's): the tools and the
  expected JSON {"name", "arguments"} are described in the system message, and the answer is
  parsed as that JSON.

The grammar is built from the tools' schemas (llama-cpp-python's converter, llama.cpp's rules).
With `tool_choice` "required" (or a named function) it constrains the answer from its first
token: a call must come out. With "auto" it is lazy, as in llama-server: the model writes freely
until it starts a call (the syntax's opening text appears, or the answer opens with `{"name"`
or with a ```json block holding `{"name"`, as Qwen2.5-Coder 0.5B writes its calls in place of its
template's tags), and from that token on the grammar holds, so a started call always completes
as valid JSON matching its schema. "none" renders no tools and parses nothing.

`LazyGrammar` watches the sampled tokens on the decode thread; `ToolCallParser` runs on the
caller's side over the streamed text. Neither touches the scheduler beyond the Sampler's hook.
"""

from __future__ import annotations

import ctypes
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np

from ..errors import InvalidOptionError
from ..types import Message
from .chat_template import ChatTemplate
from .sampling import grammar_for

MAX_CALLS = 8  # calls one turn may make under the grammar


@dataclass(frozen=True)
class ToolSyntax:
    """How a model family writes calls."""

    name: str  # "hermes", "mistral", "llama3", "generic"
    start: str | None  # the text that opens the calls; None: the answer itself is the JSON
    end: str | None  # the text that closes one call (Hermes)
    args_key: str  # "arguments" or "parameters" (Llama 3)
    renders_tools: bool  # the template shows the tools to the model itself

    @property
    def array(self) -> bool:
        return self.name == "mistral"


def syntax_for(template: ChatTemplate) -> ToolSyntax:
    src = "" if template.is_default else template.source
    renders = "tools" in src
    if "<tool_call>" in src:
        return ToolSyntax("hermes", "<tool_call>", "</tool_call>", "arguments", renders)
    if "[TOOL_CALLS]" in src:
        return ToolSyntax("mistral", "[TOOL_CALLS]", None, "arguments", renders)
    if "<|start_header_id|>" in src and renders:
        return ToolSyntax("llama3", None, None, "parameters", renders)
    return ToolSyntax("generic", None, None, "arguments", renders)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# --- what the template sees ----------------------------------------------------------------------

GENERIC_INSTRUCTIONS = (
    "You can call these tools (JSON schemas):\n{tools}\n\n"
    "To call a tool, answer with only a JSON object: "
    '{{"name": <tool name>, "arguments": <arguments object>}}. '
    "Otherwise answer normally."
)


def prepare_messages(messages: list[Message], tools: list[dict[str, Any]], syntax: ToolSyntax) -> list[Message]:
    """The conversation as the template should see it. Templates that render tools get it as is;
    for the others the tools and the call format go into the system message, and earlier calls
    become the JSON the model would have written (the template would drop them)."""
    if syntax.renders_tools:
        return messages
    listing = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    instructions = GENERIC_INSTRUCTIONS.format(tools=listing)
    out: list[Message] = []
    if messages and messages[0].role == "system":
        out.append(Message("system", f"{messages[0].content}\n\n{instructions}".strip()))
        messages = messages[1:]
    else:
        out.append(Message("system", instructions))
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = "\n".join(
                json.dumps(
                    {"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})}, ensure_ascii=False
                )
                for c in m.tool_calls
            )
            out.append(Message("assistant", (m.content + "\n" + calls).strip()))
        else:
            out.append(m)
    return out


# --- the grammar ---------------------------------------------------------------------------------


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


def call_schema(tools: list[dict[str, Any]], args_key: str, only: str | None = None) -> dict[str, Any]:
    """A JSON schema matching one call to any of the tools (or only the named one)."""
    options = []
    for tool in tools:
        fn = _function(tool)
        if only is not None and fn.get("name") != only:
            continue
        params = fn.get("parameters") or {"type": "object"}
        if not isinstance(params, dict):
            raise InvalidOptionError(f"tool {fn.get('name')!r}: parameters must be a JSON schema object")
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn.get("name")}, args_key: params},
                "required": ["name", args_key],
            }
        )
    if not options:
        raise InvalidOptionError(f"tool_choice names {only!r}, which is not among the tools")
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_grammar(tools: list[dict[str, Any]], syntax: ToolSyntax, only: str | None = None, lazy: bool = False) -> str:
    """GBNF for one or more calls in the syntax. A lazy grammar also accepts the whitespace that
    may precede the opening text inside the token that carries it."""
    body = grammar_for(call_schema(tools, syntax.args_key, only))
    if body is None:  # pragma: no cover - a schema always gives a grammar
        raise InvalidOptionError("the tools' schemas could not be turned into a grammar")
    body = re.sub(r"^root ::=", "tool-call ::=", body, flags=re.MULTILINE)
    # The bundled converter allows one optional space between JSON tokens; models write calls
    # pretty-printed too (Qwen2.5-Coder 0.5B: "```json\n{\n  \"name\": ..."), which that rule
    # rejected at the first newline, so the call went unconstrained. llama.cpp's own rule: a
    # space, or one or two newlines and an indent, bounded so the model cannot spin in whitespace.
    body = re.sub(r"^space ::= .*$", PRETTY_SPACE, body, flags=re.MULTILINE)
    more = f"{{0,{MAX_CALLS - 1}}}"
    bare = f"tool-call (ws tool-call){more}"
    if syntax.name == "hermes":
        one = f'"{syntax.start}" ws tool-call ws "{syntax.end}"'
        calls = f"{one} (ws {one}){more}"
    elif syntax.array:
        calls = f'"{_gbnf_escape(syntax.start or "")}" ws "[" ws tool-call ("," ws tool-call){more} ws "]"'
    else:
        calls = bare
    if lazy:
        # Woken by the syntax's opening text, or by an answer that opens with a call as bare JSON
        # or in a ```json block (LazyGrammar._start): the grammar accepts whichever woke it.
        fenced = f'"{_gbnf_escape(FENCE)}" ws {bare} ws "```"'
        root = f"root ::= lead ({calls} | {fenced} | {bare})" if calls != bare else f"root ::= lead ({bare} | {fenced})"
    else:
        root = f"root ::= {calls}"
    return f"{root}\nws ::= [ \\t\\n]{{0,4}}\nlead ::= [ \\t\\n]{{0,8}}\n{body}"


PRETTY_SPACE = 'space ::= | " " | "\\n"{1,2} [ \\t]{0,20}'


def _gbnf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# --- lazy activation on the decode thread ----------------------------------------------------------

FENCE = "```json"
# An answer that opens with a call: `{"name"`, after Llama 3's python tag or inside a ```json
# block; group 1 is where the call's text starts.
_ANCHORED = re.compile(r'\s*(?:<\|python_tag\|>)?\s*((?:```json\s*)?\{)\s*"name"')
_ANCHORED_PREFIXES = ('{"name"', FENCE + '{"name"')  # the same, without whitespace


class LazyGrammar:
    """Watches the tokens a Sampler picks; when the model starts a call, returns a grammar
    sampler already fed with the call's first tokens, which the Sampler then applies.

    Each token fed is checked against the grammar first (a token the grammar rejects would make
    llama.cpp abort): if the start of a call cannot be fed, constraining is given up for this
    answer and the parser takes the text as it comes."""

    def __init__(self, vocab: Any, grammar: str, syntax: ToolSyntax):
        self.vocab = vocab
        self.grammar = grammar
        self.syntax = syntax
        self.done = False
        self._opening = True  # the answer may still open with a call (bare JSON or a ```json block)
        self._tokens: list[int] = []
        self._pieces: list[str] = []
        self._text = ""
        self._buf = ctypes.create_string_buffer(256)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)

    def observe(self, token: int) -> Any | None:
        if self.done:
            return None
        n = L.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, True)
        piece = self._buf.raw[: max(n, 0)].decode("utf-8", "replace")
        self._tokens.append(token)
        self._pieces.append(piece)
        self._text += piece
        start = self._start(len(piece))
        if start is None:
            return None
        self.done = True
        return self._activate(start)

    def _start(self, new: int) -> int | None:
        """Where the call starts in the text, once it has clearly started (only the newest
        `new` characters and what precedes them by a marker's length are searched)."""
        if self._opening:
            opened = _ANCHORED.match(self._text)
            if opened:
                return opened.start(1)
            compact = re.sub(r"\s", "", self._text.replace("<|python_tag|>", ""))
            if any(p.startswith(compact) for p in _ANCHORED_PREFIXES):
                return None  # undecided yet
            self._opening = False
            if self.syntax.start is None:
                self.done = True  # the answer is text, not a call
                return None
            new = len(self._text)  # the opening text may hold the syntax's marker already
        if self.syntax.start is not None:
            at = self._text.find(self.syntax.start, max(len(self._text) - new - len(self.syntax.start), 0))
            return at if at >= 0 else None
        return None

    def _activate(self, start: int) -> Any | None:
        offset, first = 0, 0
        for i, piece in enumerate(self._pieces):
            if offset + len(piece) > start:
                first = i
                break
            offset += len(piece)
        if self._text[offset:start].strip():
            return None  # words before the call inside the same token: not constrained
        grammar = L.llama_sampler_init_grammar(self.vocab, self.grammar.encode(), b"root")
        if not grammar:
            return None
        for token in self._tokens[first:]:
            self._one["id"], self._one["logit"], self._one["p"] = token, 1.0, 0.0
            arr = L.llama_token_data_array(
                data=self._one.ctypes.data_as(L.llama_token_data_p), size=1, selected=-1, sorted=False
            )
            L.llama_sampler_apply(grammar, ctypes.byref(arr))
            if not np.isfinite(self._one["logit"][0]):
                L.llama_sampler_free(grammar)
                return None
            L.llama_sampler_accept(grammar, token)
        return grammar


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


# --- parsing the streamed text ---------------------------------------------------------------------


@dataclass
class ToolCallParser:
    """Text in (as it streams), answer text and finished calls out. Text that could be the start
    of a call is held back until it is clear; a call that does not parse is given back as text,
    never dropped."""

    syntax: ToolSyntax
    tool_names: set[str]
    _buf: str = ""
    _state: str = "text"  # text | call | undecided (anchored syntaxes start undecided)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Every syntax starts undecided: an answer that opens with a JSON object (or a ```json
        # block, as Qwen2.5-Coder writes its calls) is held to the end and parsed as calls.
        self._state = "undecided"

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._buf += text
        out, calls = "", list[dict[str, Any]]()
        while True:
            if self._state == "undecided":
                probe = self._buf.lstrip().removeprefix("<|python_tag|>").lstrip()
                if not probe or "<|python_tag|>".startswith(probe) or FENCE.startswith(probe):
                    return out, calls
                if probe.startswith("{") or probe.startswith(FENCE):
                    self._state = "json"
                    return out, calls
                self._state = "text"
                continue
            if self._state == "json":  # held whole: parsed (or given back) at the end
                return out, calls
            if self._state == "text":
                if self.calls:  # whitespace between calls is not part of the answer
                    self._buf = self._buf.lstrip()
                    if not self._buf:
                        return out, calls
                if self.syntax.start is None:  # anchored: the answer is text, all of it
                    out, self._buf = out + self._buf, ""
                    return out, calls
                at = self._buf.find(self.syntax.start)
                if at < 0:
                    keep = _partial_suffix(self._buf, self.syntax.start)
                    out += self._buf[: len(self._buf) - keep]
                    self._buf = self._buf[len(self._buf) - keep :]
                    return out, calls
                out += self._buf[:at]
                self._buf = self._buf[at:]
                self._state = "call"
                continue
            # call: Hermes closes each call; the others run to the end of the answer
            if self.syntax.end is None:
                return out, calls
            end = self._buf.find(self.syntax.end)
            if end < 0:
                return out, calls
            block = self._buf[: end + len(self.syntax.end)]
            self._buf = self._buf[end + len(self.syntax.end) :]
            parsed = self._parse(block)
            if parsed is None:
                out += block
            else:
                calls += parsed
            self._state = "text"

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """The end of the answer: whatever is held back, as a call if it parses."""
        buf, self._buf = self._buf, ""
        if self._state in ("call", "json") and buf.strip():
            parsed = self._parse(buf)
            if parsed is not None:
                return "", parsed
        return buf, []

    def _parse(self, block: str) -> list[dict[str, Any]] | None:
        text = block.strip()
        if self.syntax.start and text.startswith(self.syntax.start):
            text = text[len(self.syntax.start) :]
        if self.syntax.end and text.endswith(self.syntax.end):
            text = text[: -len(self.syntax.end)]
        text = text.strip().removeprefix("<|python_tag|>").strip()
        if text.startswith(FENCE) and text.endswith("```"):
            text = text[len(FENCE) : -3].strip()
        objects = _json_objects(text)
        if objects is None:
            return None
        calls = []
        for obj in objects:
            call = self._call(obj)
            if call is None:
                return None
            calls.append(call)
        self.calls += calls
        return calls or None

    def _call(self, obj: Any) -> dict[str, Any] | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        if obj["name"] not in self.tool_names:
            return None
        args = obj.get(self.syntax.args_key, obj.get("arguments", obj.get("parameters", {})))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return {"function": {"name": obj["name"], "arguments": args}, "id": new_call_id()}


def _json_objects(text: str) -> list[Any] | None:
    """One JSON array, or JSON values one after another (separated by spaces, ';' or ',')."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])
    return values or None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


# --- one request's plan ----------------------------------------------------------------------------


@dataclass
class ToolPlan:
    """What tool calling means for one request on one model."""

    syntax: ToolSyntax
    tools: list[dict[str, Any]]
    messages: list[Message]  # as the template should see them
    grammar: str  # the calls' grammar (lazy unless required)
    required: bool

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.tools if self.syntax.renders_tools else None

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.syntax, {n for t in self.tools if isinstance(n := _function(t).get("name"), str)})

    def lazy(self, vocab: Any) -> LazyGrammar | None:
        return None if self.required else LazyGrammar(vocab, self.grammar, self.syntax)


def template_inputs(
    template: ChatTemplate, messages: list[Message], tools: list[dict[str, Any]] | None, tool_choice: str = "auto"
) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """The messages and tools to render for a request (what the prompt really holds)."""
    if not tools or tool_choice == "none":
        return messages, None
    syntax = syntax_for(template)
    return prepare_messages(messages, tools, syntax), (tools if syntax.renders_tools else None)


def plan(
    template: ChatTemplate,
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
    tool_choice: str = "auto",
    forced: str | None = None,
) -> ToolPlan | None:
    if not tools or tool_choice == "none":
        return None
    syntax = syntax_for(template)
    required = tool_choice == "required" or forced is not None
    grammar = call_grammar(tools, syntax, only=forced, lazy=not required)
    return ToolPlan(
        syntax=syntax,
        tools=tools,
        messages=prepare_messages(messages, tools, syntax),
        grammar=grammar,
        required=required,
    )
