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
                  (target 100% with the grammar); "started" counts those answers;
- no call:        answers with no call at all.

Accuracy, not speed: it needs no CPU lock. Greedy decoding (temperature 0), so runs repeat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import use_repo  # noqa: E402

use_repo()

from lmgauge.config import Settings  # noqa: E402
from lmgauge.engines import toolcalls  # noqa: E402
from lmgauge.engines.base import collect  # noqa: E402
from lmgauge.engines.llamacpp import LlamaCppEngine, make_template  # noqa: E402
from lmgauge.models import inspect_gguf  # noqa: E402
from lmgauge.types import ChatRequest, Message, Options  # noqa: E402


def fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


TOOLS = [
    fn(
        "get_weather",
        "Get the current weather for a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city"],
    ),
    fn("add", "Add two integers", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]),
    fn(
        "convert_currency",
        "Convert an amount of money from one currency to another",
        {
            "amount": {"type": "number"},
            "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
            "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
        },
        ["amount", "from_currency", "to_currency"],
    ),
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
    (
        "I want to change 75 CHF to EUR.",
        "convert_currency",
        {"amount": 75, "from_currency": "CHF", "to_currency": "EUR"},
    ),
    (
        "What is 10 dollars in British pounds?",
        "convert_currency",
        {"amount": 10, "from_currency": "USD", "to_currency": "GBP"},
    ),
    ("Convert 3000 JPY to USD.", "convert_currency", {"amount": 3000, "from_currency": "JPY", "to_currency": "USD"}),
    ("Exchange 500 EUR to CAD.", "convert_currency", {"amount": 500, "from_currency": "EUR", "to_currency": "CAD"}),
    (
        "How much is 1 BTC in USD? Use the converter.",
        "convert_currency",
        {"amount": 1, "from_currency": "BTC", "to_currency": "USD"},
    ),
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
    """The syntax's opening text anywhere, or an answer that opens with JSON (bare or in a ```json
    block, as Qwen2.5-Coder 0.5B writes its calls): both are parsed as calls."""
    opening = text.lstrip().removeprefix("<|python_tag|>").lstrip()
    return bool(syntax.start and syntax.start in text) or opening.startswith(("{", toolcalls.FENCE))


def ask(engine: LlamaCppEngine, model: str, prompt: str, grammar: bool) -> list | str:
    """The calls the model makes (or its text when it makes none), with or without the grammar."""
    original = toolcalls.ToolPlan.lazy
    if not grammar:
        toolcalls.ToolPlan.lazy = lambda self, vocab: None  # the parser alone
    try:
        result = collect(
            engine.chat(
                ChatRequest(
                    model=model,
                    messages=[Message("user", prompt)],
                    tools=TOOLS,
                    options=Options(temperature=0, num_predict=96),
                )
            )
        )
    finally:
        toolcalls.ToolPlan.lazy = original
    return result.tool_calls or result.content


class Score:
    def __init__(self) -> None:
        self.n = self.right_function = self.schema_valid = self.right_values = self.started = self.parsed = 0
        self.no_call = 0

    def add(self, answer: list | str, name: str, expected: dict, syntax: toolcalls.ToolSyntax) -> None:
        self.n += 1
        calls = answer if isinstance(answer, list) else []
        unparsed = isinstance(answer, str) and started_a_call(answer, syntax)
        if unparsed:  # shown, so that a parse failure can be diagnosed
            print(f"started a call that did not parse: {answer!r}", file=sys.stderr, flush=True)
        if calls or unparsed:
            self.started += 1
            self.parsed += bool(calls)
        if not calls:
            self.no_call += 1
            return
        first = calls[0]["function"]
        self.right_function += first["name"] == name
        valid = True
        for call in calls:
            try:
                jsonschema.validate(call["function"]["arguments"], SCHEMAS[call["function"]["name"]])
            except (jsonschema.ValidationError, KeyError):
                valid = False
        self.schema_valid += valid
        self.right_values += first["name"] == name and values_match(first["arguments"], expected)

    def row(self, model: str, mode: str) -> str:
        share = lambda k: f"{k / self.n:>7.0%}" if self.n else "      -"  # noqa: E731  a short factory, read where it is used
        parses = f"{self.parsed / self.started:>7.0%}" if self.started else "      -"
        return (
            f"{model[:40]:40} {mode:8} {self.n:>3} {share(self.right_function):>9} {share(self.schema_valid)} "
            f"{share(self.right_values)} {parses} {self.started:>8} {share(self.no_call):>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--limit", type=int, default=len(LABELLED))
    parser.add_argument(
        "--threads",
        type=int,
        help="llama.cpp threads (default: physical cores); 1 wastes no "
        "CPU spinning at barriers on a machine other processes keep busy",
    )
    parser.add_argument("--grammar", choices=["both", "on", "off"], default="both", help="which mode(s) to run")
    args = parser.parse_args()
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.grammar]
    engine = LlamaCppEngine(Settings(keep_alive=-1, threads=args.threads))
    header = (
        f"{'model':40} {'grammar':8} {'n':>3} {'function':>9} {'schema':>7} {'values':>7} {'parses':>7} "
        f"{'started':>8} {'no call':>8}"
    )
    rows = []
    try:
        for model in args.models:
            syntax = toolcalls.syntax_for(make_template(inspect_gguf(model), engine._vocab(model)))
            scores = {True: Score(), False: Score()}
            for i, (prompt, name, expected) in enumerate(LABELLED[: args.limit]):
                for grammar in modes:  # the same prompt both ways, so a partial run still compares
                    scores[grammar].add(ask(engine, model, prompt, grammar), name, expected, syntax)
                print(
                    f"[{i + 1}/{min(args.limit, len(LABELLED))}] so far:",
                    *[scores[g].row(Path(model).name, "on" if g else "off") for g in modes],
                    sep="\n",
                    file=sys.stderr,
                    flush=True,
                )
            rows += [scores[g].row(Path(model).name, "on" if g else "off") for g in modes]
            print(header, *rows, sep="\n", flush=True)
            engine.unload(model)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
