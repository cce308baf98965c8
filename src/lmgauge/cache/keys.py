"""The cache key of a request, and whether a request may be cached at all.

The exact key hashes the normalized request: model, messages (whitespace runs collapsed),
the options that change the output, format and tools. Option order, engine-only options
(threads, batch size) and keep_alive do not change it. The context key is the same without
the last user message: the neighbourhood a semantic lookup searches.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..types import RESOURCE_OPTION_NAMES, ChatRequest, Options

# Options that change how fast an answer comes, not what it says.
NON_SEMANTIC_OPTIONS = RESOURCE_OPTION_NAMES


def squash_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalized_request(request: ChatRequest, *, without_last_user: bool = False) -> dict[str, Any]:
    """The parts of a request that decide its answer, in a canonical form."""
    messages = list(request.messages)
    if without_last_user and messages and messages[-1].role == "user":
        messages = messages[:-1]
    options = {k: v for k, v in sorted(request.options.to_dict().items()) if k not in NON_SEMANTIC_OPTIONS}
    return {
        "model": request.model,
        "messages": [
            {
                "role": m.role,
                "content": squash_whitespace(m.content),
                "tool_calls": m.tool_calls,
                "tool_name": m.tool_name,
                "images": m.images,
            }
            for m in messages
        ],
        "options": options,
        "format": request.format,
        "tools": request.tools,
        "semantic": without_last_user,
    } | {  # tool choice and thinking change the answer; absent when default, so older keys still match
        name: value
        for name, value in (
            ("choice", request.tool_choice),
            ("forced_tool", request.forced_tool),
            ("think", request.think),
        )
        if value not in (None, "auto")
    }


def request_key(request: ChatRequest, *, without_last_user: bool = False) -> str:
    canonical = json.dumps(
        normalized_request(request, without_last_user=without_last_user),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_deterministic(options: Options) -> bool:
    """Greedy decoding, or sampling with a fixed seed: the same request gives the same answer."""
    return options.temperature == 0 or options.seed is not None
