"""Thinking on the embedded engine: whether a model's template reasons, what `think` asks of it,
and the reasoning taken apart from the answer as it streams.

A template "thinks" when it writes or expects `<think>...</think>` (Qwen3, DeepSeek-R1, and
their fine-tunes). `think: false` is passed to the template as `enable_thinking=False` (Qwen3's
switch, which makes the template close an empty think block itself); an effort level goes in
as `reasoning_effort` for templates that take a budget. Asking a template that does not think
to think is the client's mistake: a clear InvalidOptionError (400), as Ollama answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError
from ..types import Think
from .chat_template import ChatTemplate

OPEN, CLOSE = "<think>", "</think>"


def template_thinks(template: ChatTemplate) -> bool:
    src = "" if template.is_default else template.source
    return OPEN in src or "enable_thinking" in src


def template_variables(template: ChatTemplate, think: Think) -> dict[str, Any]:
    """What to pass to the template for a request's `think` (refusing it where it means nothing)."""
    if think is None:
        return {}
    thinks = template_thinks(template)
    if not thinks:
        if think is False:
            return {}  # not thinking is what this model does anyway
        raise InvalidOptionError(
            "this model does not support thinking (think); its chat template has no <think> section"
        )
    out: dict[str, Any] = {"enable_thinking": think is not False}
    if isinstance(think, str):
        out["reasoning_effort"] = think
    return out


@dataclass
class ThinkingSplitter:
    """Streamed text in, (thinking, answer) out. The reasoning is what comes between <think> and
    </think> at the start of the answer (or from the start, when the prompt already opened the
    block); a partial tag is held back until it is clear."""

    _state: str = "start"  # start | lead (after <think>) | thinking | gap (after </think>) | answer
    _buf: str = ""

    @classmethod
    def for_prompt(cls, prompt: str) -> ThinkingSplitter:
        opened = prompt.rstrip().endswith(OPEN)
        return cls(_state="lead" if opened else "start")

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        thinking = ""
        while True:
            if self._state == "lead":  # the newline after <think>
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    return thinking, ""
                self._state = "thinking"
            if self._state == "gap":  # the blank lines between the reasoning and the answer
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return thinking, ""
                self._state = "answer"
            if self._state == "answer":
                out, self._buf = self._buf, ""
                return thinking, out
            if self._state == "start":
                probe = self._buf.lstrip()
                if not probe or (OPEN.startswith(probe) and len(probe) < len(OPEN)):
                    return thinking, ""
                if probe.startswith(OPEN):
                    self._buf = probe[len(OPEN) :]
                    self._state = "lead"
                else:
                    self._state = "answer"
                continue
            at = self._buf.find(CLOSE)
            if at < 0:
                keep = next(
                    (n for n in range(min(len(CLOSE) - 1, len(self._buf)), 0, -1) if self._buf.endswith(CLOSE[:n])), 0
                )
                thinking += self._buf[: len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep :]
                return thinking, ""
            thinking += self._buf[:at]
            self._buf = self._buf[at + len(CLOSE) :]
            self._state = "gap"

    def finish(self) -> tuple[str, str]:
        buf, self._buf = self._buf, ""
        if self._state in ("lead", "thinking"):
            return buf, ""
        return "", buf.lstrip() if self._state == "gap" else buf
