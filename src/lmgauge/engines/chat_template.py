"""Render a conversation with the chat template stored in the model's GGUF.

Templates are Jinja2, written for Hugging Face's `apply_chat_template`; we render them the same
way (sandboxed, trim_blocks, lstrip_blocks, `raise_exception`, `strftime_now`). A model without a
template gets ChatML, the most common format, and `info()` says so.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidOptionError
from ..types import Message

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidOptionError(f"chat template refused the conversation: {message}")


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        self.is_default = not source
        self.source = source or CHATML
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(self.source)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """`variables`: what some templates read besides the conversation (enable_thinking,
        reasoning_effort; see thinking.py)."""
        try:
            return self._template.render(
                messages=[_for_template(m) for m in messages],
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **variables,
            )
        except (TemplateError, TypeError, ValueError, LookupError, AttributeError) as exc:
            # a conversation the template cannot render (e.g. a tool call's name that is not a string)
            raise InvalidOptionError(f"the model's chat template failed on this conversation: {exc}") from None


def _for_template(message: Message) -> dict[str, Any]:
    out = message.to_dict()
    if message.tool_calls:  # templates expect arguments as a mapping, as HF passes them
        calls = []
        for call in message.tool_calls:
            fn = call.get("function", call)
            if not isinstance(fn, dict):
                raise InvalidOptionError("tool_calls[].function must be an object with name and arguments")
            fn = dict(fn)
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except ValueError:
                    pass
            calls.append({"type": "function", "function": fn})
        out["tool_calls"] = calls
    return out
