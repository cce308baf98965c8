"""A tool loop for `lmgauge run MODEL --tools FILE`: try tool calling without writing a client.

FILE is either a Python file, whose public functions become the tools (their JSON schemas are
built from the type hints and Google-style docstrings, as the official `ollama` client does for
`tools=[python_function]`, and each call runs the function), or a JSON file holding a list of
tool schemas (OpenAI/Ollama's `tools`), whose calls are answered by whoever is at the terminal.

The loop: ask, run every call the model makes, send the results back as `tool` messages (with
the call's id and the function's name), and ask again, until the model answers with text or
`max_rounds` is reached. The Python file is the user's own code, run because they named it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidOptionError
from .types import Message, Result

MAX_ROUNDS = 8


@dataclass
class Toolbox:
    schemas: list[dict[str, Any]]
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)  # empty for a JSON file


def load_toolbox(path: Path) -> Toolbox:
    if not path.is_file():
        raise InvalidOptionError(
            f"--tools {path}: no such file (give a .py file of functions or a .json list of tools)"
        )
    if path.suffix == ".py":
        return _from_python(path)
    try:
        schemas = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidOptionError(f"--tools {path}: not valid JSON ({exc})") from None
    from .wire.ollama import tools_from_wire

    if isinstance(schemas, dict):
        schemas = [schemas]
    return Toolbox(tools_from_wire(schemas) or [])


def _from_python(path: Path) -> Toolbox:
    from ollama._utils import convert_function_to_tool

    spec = importlib.util.spec_from_file_location(f"lmgauge_tools_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise InvalidOptionError(f"--tools {path}: cannot load this file as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: say what failed, in one line
        raise InvalidOptionError(f"--tools {path}: importing it failed: {type(exc).__name__}: {exc}") from None
    functions: dict[str, Callable[..., Any]] = {
        name: f
        for name, f in vars(module).items()
        if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")
    }
    if not functions:
        raise InvalidOptionError(f"--tools {path}: defines no public functions to offer as tools")
    schemas = []
    for name, f in functions.items():
        try:
            schema = convert_function_to_tool(f).model_dump(exclude_none=True)
        except Exception as exc:  # noqa: BLE001
            raise InvalidOptionError(f"--tools {path}: {name}() cannot be described as a tool: {exc}") from None
        params = schema["function"].get("parameters") or {}
        signature = inspect.signature(f)
        params["required"] = [p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty]
        schemas.append(schema)
    return Toolbox(schemas, functions)


def call_tool(toolbox: Toolbox, call: dict[str, Any], ask: Callable[[str], str]) -> str:
    """Run one call; its result (or the error it raised) as the text the model will read."""
    fn = call["function"]
    name, args = fn["name"], fn.get("arguments") or {}
    if name not in toolbox.functions:
        return ask(f"{name}({json.dumps(args, ensure_ascii=False)})")
    try:
        value = toolbox.functions[name](**args)
    except Exception as exc:  # noqa: BLE001 - the model reads what went wrong and may retry
        return f"error: {type(exc).__name__}: {exc}"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def run_loop(
    chat: Callable[[list[Message]], Result],
    messages: list[Message],
    toolbox: Toolbox,
    show: Callable[[str, str], None],
    ask: Callable[[str], str],
    max_rounds: int = MAX_ROUNDS,
) -> Result:
    """Ask until the model answers without calls. `chat` sends the conversation (with the tools)
    and returns the Result; `show(kind, text)` reports each call and result as it happens."""
    result = chat(messages)
    for _ in range(max_rounds):
        if not result.tool_calls:
            return result
        messages = messages + [result.message]
        for call in result.tool_calls:
            fn = call["function"]
            show("call", f"{fn['name']}({json.dumps(fn.get('arguments') or {}, ensure_ascii=False)})")
            output = call_tool(toolbox, call, ask)
            show("result", output)
            messages.append(Message("tool", output, tool_name=fn["name"], tool_call_id=call.get("id")))
        result = chat(messages)
    return result
