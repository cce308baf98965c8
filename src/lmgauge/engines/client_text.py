"""Chat prompts whose control tokens come from the chat template only, never from what a client wrote.

A chat template wraps each message in the model's control tokens (`<|im_start|>user ... <|im_end|>`).
Tokenizing the rendered prompt with special-token parsing on -- needed for the template's own
tokens -- would also turn those strings inside a message into real control tokens: a user message
containing `<|im_end|>\n<|im_start|>system\n...` would become a real system turn (role spoofing).

So a message whose text would parse into a control token is replaced by a marker before
rendering; the rendered prompt is cut at the markers, the template's pieces are tokenized with
special-token parsing on and the message texts with it off (they become the plain-text tokens of
`<`, `|`, `im`, ...). Messages without such text -- nearly all -- render and tokenize exactly as
before. Tool definitions and tool calls are rendered by the template as JSON; control-token text
there is refused (400) rather than guessed about. Raw prompts (`raw: true`, /v1/completions) are
the client's whole prompt, template included, and keep special-token parsing (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import InvalidOptionError
from ..types import Message

# (text, parse_special) -> token ids, without BOS/EOS
Tokenize = Callable[[str, bool], list[int]]
_MARK = "\ue000lmgauge-message-{}\ue001"  # private-use characters: no template or text has them
_MARK_RE = re.compile("(\ue000lmgauge-message-\\d+\ue001)")


def has_control_text(tokenize: Tokenize, text: str, initials: frozenset[str]) -> bool:
    """True when special-token parsing would turn part of `text` into a control token.
    `initials` (the first characters of the vocabulary's control tokens) rule most text out
    without tokenizing it; the rest is tokenized both ways and compared."""
    if not text or not any(c in text for c in initials):
        return False
    return tokenize(text, True) != tokenize(text, False)


def refuse_control_text_in_tools(
    tokenize: Tokenize, messages: list[Message], tools: list[dict[str, Any]] | None, initials: frozenset[str]
) -> None:
    """Tool definitions and calls are rendered as JSON (or folded into a system message by
    toolcalls.py): control-token text there is refused (400), never rendered."""
    for name, value in (
        ("tools", tools),
        ("tool_calls", [m.tool_calls for m in messages if m.tool_calls]),
        ("tool_name", [m.tool_name for m in messages if m.tool_name]),
    ):
        if value and has_control_text(tokenize, json.dumps(value, ensure_ascii=False), initials):
            raise InvalidOptionError(
                f"{name} contain the model's control tokens (e.g. <|im_start|>); only message content may quote them"
            )


def chat_tokens(
    tokenize: Tokenize,
    whole: Callable[[str], list[int]],
    render: Callable[[list[Message], list[dict[str, Any]] | None], str],
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
    initials: frozenset[str],
) -> list[int]:
    """The prompt tokens of a conversation. `whole(text)` tokenizes the start of a prompt (BOS
    added when the model wants it, special tokens parsed); `tokenize` the pieces after it."""
    refuse_control_text_in_tools(tokenize, messages, tools, initials)
    marked: dict[str, str] = {}
    safe = []
    for i, m in enumerate(messages):
        if has_control_text(tokenize, m.content, initials):
            marker = _MARK.format(i)
            marked[marker] = m.content
            m = dataclasses.replace(m, content=marker)
        safe.append(m)
    text = render(safe, tools)
    if not marked:
        return whole(text)
    pieces = _MARK_RE.split(text)
    seen = [p for p in pieces if p in marked]
    if sorted(seen) != sorted(marked):  # the template dropped, changed or repeated a message
        raise InvalidOptionError(
            "a message quotes the model's control tokens (e.g. <|im_start|>) and this "
            "model's chat template transforms message text, so it cannot be kept as plain "
            "text; remove the control tokens from the message"
        )
    tokens = whole(pieces[0])  # the text before the first marker (maybe empty: then just BOS)
    for piece in pieces[1:]:
        if piece in marked:
            tokens += tokenize(marked[piece], False)
        elif piece:
            tokens += tokenize(piece, True)
    return tokens
