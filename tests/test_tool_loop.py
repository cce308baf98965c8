"""`lmgauge run MODEL --tools FILE`: the functions of a Python file offered as tools, run when the
model calls them, their results sent back until the model answers; mistakes are one line."""

from __future__ import annotations

import json

from lmgauge import tool_loop
from lmgauge.types import Message, Result, Timings
from support.cli import assert_one_line_error, lmgauge

TOOLS_PY = '''
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
      city: The city
      unit: celsius or fahrenheit
    """
    return f"sunny, 21 degrees {unit} in {city}"


def _private():
    pass
'''


def test_python_functions_become_tool_schemas(tmp_path):
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_PY)
    box = tool_loop.load_toolbox(path)
    fn = box.schemas[0]["function"]
    assert [s["function"]["name"] for s in box.schemas] == ["get_weather"]
    assert fn["parameters"]["required"] == ["city"] and fn["description"].startswith("Get the current weather")
    call = {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    assert tool_loop.call_tool(box, call, ask=lambda c: "unused") == "sunny, 21 degrees celsius in Oslo"
    bad = {"function": {"name": "get_weather", "arguments": {"town": "Oslo"}}}
    assert tool_loop.call_tool(box, bad, ask=lambda c: "unused").startswith("error: TypeError")


def test_the_loop_sends_results_back_linked_to_their_call():
    calls = [{"id": "call_a", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    seen: list[list[Message]] = []

    def chat(messages):
        seen.append(messages)
        done = messages[-1].role == "tool"
        return Result(
            model="m",
            content="It is sunny." if done else "",
            done_reason="stop",
            timings=Timings(),
            tool_calls=None if done else calls,
        )

    box = tool_loop.Toolbox(schemas=[], functions={"get_weather": lambda city: f"sunny in {city}"})
    shown: list[tuple[str, str]] = []
    result = tool_loop.run_loop(
        chat, [Message("user", "weather?")], box, show=lambda k, t: shown.append((k, t)), ask=lambda c: "unused"
    )
    assert result.content == "It is sunny."
    assert seen[1][-1] == Message("tool", "sunny in Oslo", tool_name="get_weather", tool_call_id="call_a")
    assert shown == [("call", 'get_weather({"city": "Oslo"})'), ("result", "sunny in Oslo")]


def test_cli_runs_the_tool_loop_against_a_model_that_calls(tmp_path, start_standin):
    from support.standins import OllamaStandin

    server = start_standin(
        OllamaStandin, tool_calls=[{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]
    )
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_PY)
    proc = lmgauge(
        "run",
        "ollama:standin",
        "What is the weather in Tokyo?",
        "--tools",
        str(path),
        env_extra={"OLLAMA_HOST": server.url},
    )
    assert proc.returncode == 0, proc.stderr
    assert 'call: get_weather({"city": "Tokyo"})' in proc.stderr
    assert "result: sunny, 21 degrees celsius in Tokyo" in proc.stderr
    assert proc.stdout.strip()  # the model's final answer
    sent = server.last().body["messages"]
    assert sent[-1] == {"role": "tool", "content": "sunny, 21 degrees celsius in Tokyo", "tool_name": "get_weather"}
    assert server.last().body["tools"][0]["function"]["name"] == "get_weather"


def test_cli_tools_file_mistakes_are_one_line(tmp_path):
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--tools", str(tmp_path / "none.py")), "no such file")
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--tools", str(broken)), "importing it failed")
    bad_json = tmp_path / "tools.json"
    bad_json.write_text(json.dumps([{"type": "function"}]))
    assert_one_line_error(lmgauge("run", "smollm2", "hi", "--tools", str(bad_json)), "tools[0]")
