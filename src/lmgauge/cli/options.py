"""What commands share on the way in: the flags several commands take, and the parsers that turn
their text into values (`-o key=value`, the list grammar `512,2k`, `--format`, piped stdin).

A value a user got wrong raises InvalidOptionError, which `main` prints on one line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidOptionError
from ..types import Format
from .console import err

ModelArg = Annotated[
    str, typer.Argument(help="Model name (see `lmgauge models`), a .gguf path, ollama:NAME or openai:NAME@URL.")
]
OptionFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-o",
        help="Model option as key=value, repeatable (e.g. -o temperature=0 "
        "-o num_ctx=8192 -o stop='[\"\\n\"]'). Names as in Ollama's Modelfile.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SystemFlag = Annotated[str | None, typer.Option(help="System message.")]
SchemaFlag = Annotated[str | None, typer.Option("--format", help="'json', or a JSON schema (file or inline).")]


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """-o key=value pairs; values parse as JSON when they can (numbers, booleans, lists)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(f"option {pair!r} must look like key=value")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def parse_counts(values: list[str] | str | None, flag: str, minimum: int = 1) -> list[int]:
    """One grammar for every list flag (--ctx, --concurrency, --ctx-sweep): comma-separated and/or
    repeated, k/K = 1024 (`--ctx 512,2k --ctx 8k` -> [512, 2048, 8192]); sorted, unique."""
    if isinstance(values, str):
        values = [values]
    out: list[int] = []
    for part in (p.strip() for v in values or [] for p in v.split(",")):
        if not part:
            continue
        scale = 1024 if part[-1] in "kK" else 1
        try:
            value = float(part.rstrip("kK")) * scale
        except ValueError:
            raise InvalidOptionError(f"{flag}: {part!r} is not a whole number (e.g. {flag} 512,2k,8k)") from None
        if value != int(value) or value < minimum:
            raise InvalidOptionError(f"{flag}: {part!r} must be a whole number >= {minimum}")
        out.append(int(value))
    return sorted(set(out))


def one_count(value: str | None, flag: str) -> int | None:
    """A single count in the list grammar (8192 or 8k); a list is refused, not half-used."""
    if value is None:
        return None
    counts = parse_counts(value, flag)
    if len(counts) != 1:
        raise InvalidOptionError(
            f"{flag} takes one value here (got {value!r}); measure several windows with `lmgauge bench --ctx-sweep`"
        )
    return counts[0]


def split_deprecated_output(pairs: list[str] | None, command: str) -> tuple[list[str], list[str]]:
    """`-o` is a model option everywhere (key=value); `batch` and `report` once used it for the
    output file. A value without `=` there is still read as the output, with a note to use -O."""
    options: list[str] = []
    outputs: list[str] = []
    for value in pairs or []:
        (options if "=" in value else outputs).append(value)
    if outputs:
        err.print(
            f"note: `lmgauge {command} -o FILE` is deprecated: -o is a model option (key=value) in every "
            f"command; write the output with -O/--output {outputs[0]}"
        )
    return options, outputs


def parse_format(value: str | None) -> Format:
    """--format json | a JSON schema file | an inline JSON schema."""
    if not value:
        return None
    if value == "json":
        return "json"
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise InvalidOptionError(f"--format must be 'json', a JSON schema file or inline JSON; no file {value!r}")
        text = path.read_text()
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidOptionError(f"--format schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidOptionError("--format schema must be a JSON object")
    return schema


def check_parallel(parallel: int | None) -> None:
    if parallel is not None and parallel < 1:
        raise InvalidOptionError(f"--parallel must be at least 1 (got {parallel})")


def read_piped_stdin() -> str | None:
    """What was piped or redirected into stdin (a pipe or a file), else None. A terminal or a
    character device such as /dev/null is not input, so scripts and CI never block on it."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return None
    if sys.stdin.isatty() or not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return None
    text = sys.stdin.read()
    return text.strip() or None


def prompt_with_stdin(prompt: str | None, piped: str | None) -> str | None:
    """Text piped in goes after the prompt (`cat notes.txt | lmgauge run smollm2 "Summarize:"`);
    '-' is the piped text alone; no prompt and nothing piped stays None (an interactive chat)."""
    if prompt == "-":
        return piped or ""
    if prompt is not None and piped:
        return f"{prompt}\n\n{piped}"
    if prompt is None and piped is not None:
        return piped
    return prompt
