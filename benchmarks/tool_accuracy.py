"""Tool-call accuracy of the embedded engine on a labelled set, with and without the grammar.

    python benchmarks/tool_accuracy.py MODEL.gguf [MODEL2.gguf ...] [--limit N]

For each of 40 requests (5 tools; the label is the function that should be called and the
argument values that must appear) the model answers with tool_choice "auto", once with the
lazy grammar (what lmgauge does) and once without it (the parser alone, as Ollama does). It
prints, per model and mode:

- right function: the first call names the labelled function;
- schema-valid:   every call's arguments validate against its tool's JSON schema;
- right values:   the labelled argument values are there (strings compared case-insensitively);
- parse share:    of the answers where the model started a call, the share whose calls parsed
                  (target 100% with the grammar);
- no call:        answers with no call at all.

Accuracy, not speed: it needs no CPU lock. Greedy decoding (temperature 0), so runs repeat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from lmgauge.config import Settings  # noqa: E402
from lmgauge.engines import toolcalls  # noqa: E402
from lmgauge.engines.base import collect  # noqa: E402
from lmgauge.engines.llamacpp import LlamaCppEngine, make_template  # noqa: E402
from lmgauge.models import inspect_gguf  # noqa: E402
from lmgauge.types import ChatRequest, Message, Options  # noqa: E402


def fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


TOOLS = [
    fn("get_weather", "Get the current weather for a city",
       {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    fn("add", "Add two integers", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]),
    fn("convert_currency", "Convert an amount of money from one currency to another",
       {"amount": {"type": "number"}, "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
        "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"}}, ["amount", "from_currency", "to_currency"]),
    fn("set_timer", "Set a timer", {"minutes": {"type": "integer"}, "label": {"type": "string"}}, ["minutes"]),
    fn("search_web", "Search the web", {"query": {"type": "string"}}, ["query"]),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

# (prompt, function, argument values that must be present)
LABELLED = [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("Is it cold in Oslo right now?", "get_weather", {"city": "Oslo"}),
    ("Tell me the weather in Tokyo in fahrenheit.", "get_weather", {"city": "Tokyo", "unit": "fahrenheit"}),
    ("How warm is it in Lagos today, in celsius?", "get_weather", {"city": "Lagos", "unit": "celsius"}),
    ("Weather report for Berlin please.", "get_weather", {"city": "Berlin"}),
    ("Will I need an umbrella in London today?", "get_weather", {"city": "London"}),
    ("What is the temperature in Madrid?", "get_weather", {"city": "Madrid"}),
    ("Check the weather in Sydney.", "get_weather", {"city": "Sydney"}),
    ("What is 12 plus 30?", "add", {"a": 12, "b": 30}),
    ("Add 7 and 8.", "add", {"a": 7, "b": 8}),
    ("Compute 100 + 250.", "add", {"a": 100, "b": 250}),
    ("What's the sum of 3 and 4?", "add", {"a": 3, "b": 4}),
    ("Please add 19 to 23.", "add", {"a": 19, "b": 23}),
    ("I have 5 apples and get 6 more; use the add tool to count them.", "add", {"a": 5, "b": 6}),
    ("Add 1000 and 1.", "add", {"a": 1000, "b": 1}),
    ("What is 45 plus 55?", "add", {"a": 45, "b": 55}),
    ("Convert 100 USD to EUR.", "convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}),
    ("How many yen is 50 euros?", "convert_currency", {"amount": 50, "from_currency": "EUR", "to_currency": "JPY"}),
    ("Convert 20 GBP into USD.", "convert_currency", {"amount": 20, "from_currency": "GBP", "to_currency": "USD"}),
    ("I want to change 75 CHF to EUR.", "convert_currency", {"amount": 75, "from_currency": "CHF", "to_currency": "EUR"}),
    ("What is 10 dollars in British pounds?", "convert_currency", {"amount": 10, "from_currency": "USD", "to_currency": "GBP"}),
    ("Convert 3000 JPY to USD.", "convert_currency", {"amount": 3000, "from_currency": "JPY", "to_currency": "USD"}),
    ("Exchange 500 EUR to CAD.", "convert_currency", {"amount": 500, "from_currency": "EUR", "to_currency": "CAD"}),
    ("How much is 1 BTC in USD? Use the converter.", "convert_currency", {"amount": 1, "from_currency": "BTC", "to_currency": "USD"}),
    ("Set a timer for 10 minutes.", "set_timer", {"minutes": 10}),
    ("Start a 5 minute timer for the eggs.", "set_timer", {"minutes": 5}),
    ("Remind me in 25 minutes with a timer labelled pomodoro.", "set_timer", {"minutes": 25, "label": "pomodoro"}),
    ("Timer: 3 minutes, label tea.", "set_timer", {"minutes": 3, "label": "tea"}),
    ("Set a 60 minute timer.", "set_timer", {"minutes": 60}),
    ("Please time 15 minutes for my workout.", "set_timer", {"minutes": 15}),
    ("Count down 2 minutes.", "set_timer", {"minutes": 2}),
    ("Set a timer of 45 minutes called laundry.", "set_timer", {"minutes": 45, "label": "laundry"}),
    ("Search the web for llama.cpp grammars.", "search_web", {"query": "llama.cpp grammars"}),
    ("Find recent news about the Mars rover.", "search_web", {"query": "Mars rover"}),
    ("Look up the population of Canada online.", "search_web", {"query": "population of Canada"}),
    ("Search for the best pizza recipe.", "search_web", {"query": "pizza recipe"}),
    ("Google who won the 2018 World Cup.", "search_web", {"query": "2018 World Cup"}),
    ("Search the internet for Python 3.13 release notes.", "search_web", {"query": "Python 3.13"}),
    ("Find information about the Eiffel Tower on the web.", "search_web", {"query": "Eiffel Tower"}),
    ("Do a web search for quantum computing basics.", "search_web", {"query": "quantum computing"}),
]


def values_match(args: dict, expected: dict) -> bool:
    for key, want in expected.items():
        got = args.get(key)
        if isinstance(want, str):
            if not isinstance(got, str) or want.lower() not in got.lower():
                return False
        elif got != want and not (isinstance(got, int | float) and float(got) == float(want)):
            return False
    return True


def started_a_call(text: str, syntax: toolcalls.ToolSyntax) -> bool:
    if syntax.start:
        return syntax.start in text
    return text.lstrip().startswith("{")


def evaluate(engine: LlamaCppEngine, model: str, grammar: bool, limit: int) -> dict[str, float]:
    original = toolcalls.ToolPlan.lazy
    if not grammar:
        toolcalls.ToolPlan.lazy = lambda self, vocab: None  # the parser alone
    counts = dict(right_function=0, schema_valid=0, right_values=0, started=0, parsed=0, no_call=0)
    syntax = toolcalls.syntax_for(make_template(inspect_gguf(model), engine._vocab(model)))
    try:
        for prompt, name, expected in LABELLED[:limit]:
            result = collect(engine.chat(ChatRequest(model=model, messages=[Message("user", prompt)], tools=TOOLS,
                                                     options=Options(temperature=0, num_predict=128))))
            calls = result.tool_calls or []
            unparsed = started_a_call(result.content, syntax)
            if calls or unparsed:
                counts["started"] += 1
                counts["parsed"] += bool(calls) and not unparsed
            if not calls:
                counts["no_call"] += 1
                continue
            first = calls[0]["function"]
            counts["right_function"] += first["name"] == name
            valid = True
            for call in calls:
                try:
                    jsonschema.validate(call["function"]["arguments"], SCHEMAS[call["function"]["name"]])
                except (jsonschema.ValidationError, KeyError):
                    valid = False
            counts["schema_valid"] += valid
            counts["right_values"] += first["name"] == name and values_match(first["arguments"], expected)
    finally:
        toolcalls.ToolPlan.lazy = original
    n = min(limit, len(LABELLED))
    out = {k: counts[k] / n for k in ("right_function", "schema_valid", "right_values", "no_call")}
    out["parse_share"] = counts["parsed"] / counts["started"] if counts["started"] else float("nan")
    out["n"] = n
    out["started"] = counts["started"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--limit", type=int, default=len(LABELLED))
    args = parser.parse_args()
    engine = LlamaCppEngine(Settings(keep_alive=-1))
    print(f"{'model':40} {'grammar':8} {'n':>3} {'function':>9} {'schema':>7} {'values':>7} {'parses':>7} "
          f"{'started':>8} {'no call':>8}")
    try:
        for model in args.models:
            for grammar in (True, False):
                r = evaluate(engine, model, grammar, args.limit)
                print(f"{Path(model).name[:40]:40} {'on' if grammar else 'off':8} {r['n']:>3} "
                      f"{r['right_function']:>9.0%} {r['schema_valid']:>7.0%} {r['right_values']:>7.0%} "
                      f"{r['parse_share']:>7.0%} {r['started']:>8} {r['no_call']:>8.0%}", flush=True)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
