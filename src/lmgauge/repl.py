"""The interactive chat of `lmgauge run MODEL`, with the commands Ollama users type by habit.

Ollama's REPL treats a line starting with `/` as a command and `\"\"\"` as the start of a
multi-line message; without them here, `/set parameter temperature 0` or `/?` would be sent to
the model as a question. Implemented: /? and /help, /set parameter NAME VALUE (checked like -o),
/set system, /set verbose|quiet, /set format json|noformat, /show info|parameters|system|modelfile,
/clear, /bye (and /exit, /quit); an unknown command is refused, never sent to the model.

This module only parses and keeps the session's state; the CLI reads lines and answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidOptionError
from .types import Format, Message, Options

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message."""

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter (e.g. /set parameter temperature 0)
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set format json       Enable JSON mode
  /set noformat          Disable formatting"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show parameters   Show parameters for this session
  /show system       Show system message
  /show modelfile    Show the session as a Modelfile"""

MULTILINE = '"""'


@dataclass
class Session:
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: Format = None
    verbose: bool = False
    history: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system and not self.history:
            self.history = [Message("system", self.system)]

    def clear(self) -> None:
        self.history = [Message("system", self.system)] if self.system else []


@dataclass
class Outcome:
    """What the CLI does after a line: send `message` to the model, print `text`, or quit."""

    message: str | None = None
    text: str | None = None
    quit: bool = False


def read_message(first: str, read_line: Callable[[str], str]) -> str:
    """A line, or a \"\"\"-quoted block read until a line that ends with \"\"\" (as Ollama does)."""
    if not first.lstrip().startswith(MULTILINE):
        return first
    text = first.lstrip()[len(MULTILINE) :]
    lines: list[str] = []
    while True:
        if text.rstrip().endswith(MULTILINE):
            lines.append(text.rstrip()[: -len(MULTILINE)])
            break
        lines.append(text)
        text = read_line("... ")
    return "\n".join(lines).strip("\n")


def handle(session: Session, line: str, show_info: Callable[[], list[tuple[str, str]]]) -> Outcome:
    """One line typed at the prompt (after multi-line assembly)."""
    text = line.strip()
    if not text.startswith("/") or text.startswith("//"):
        return Outcome(message=line[1:] if text.startswith("//") else line)
    command, _, rest = text.partition(" ")
    rest = rest.strip()
    if command in ("/bye", "/exit", "/quit"):
        return Outcome(quit=True)
    if command in ("/?", "/help"):
        if rest.startswith("set"):
            return Outcome(text=SET_HELP)
        if rest.startswith("show"):
            return Outcome(text=SHOW_HELP)
        return Outcome(text=HELP)
    if command == "/clear":
        session.clear()
        return Outcome(text="Cleared session context")
    if command == "/set":
        return Outcome(text=_set(session, rest))
    if command == "/show":
        return Outcome(text=_show(session, rest, show_info))
    return Outcome(text=f"Unknown command '{command}'. Type /? for help")


def _set(session: Session, rest: str) -> str:
    what, _, value = rest.partition(" ")
    value = value.strip()
    if what == "parameter":
        name, _, raw = value.partition(" ")
        if not name or not raw.strip():
            return "Usage: /set parameter <name> <value>  (e.g. /set parameter temperature 0)"
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.strip()
        trial = {**session.options, name: parsed}
        try:
            Options.from_dict(trial)  # the same names and ranges as -o and the API
        except InvalidOptionError as exc:
            return f"error: {exc}"
        session.options = trial
        return f"Set parameter '{name}' to '{raw.strip()}'"
    if what == "system":
        session.system = value.strip('"') or None
        session.history = [m for m in session.history if m.role != "system"]
        if session.system:
            session.history.insert(0, Message("system", session.system))
        return "Set system message."
    if what == "verbose":
        session.verbose = True
        return "Set 'verbose' mode."
    if what == "quiet":
        session.verbose = False
        return "Set 'quiet' mode."
    if what == "format" and value == "json":
        session.format = "json"
        return "Set format to 'json' mode."
    if what == "noformat":
        session.format = None
        return "Disabled format."
    return SET_HELP


def _show(session: Session, rest: str, show_info: Callable[[], list[tuple[str, str]]]) -> str:
    if rest == "info":
        rows = show_info()
        width = max((len(k) for k, _ in rows), default=0) + 2
        return "\n".join(f"  {k:<{width}}{v}" for k, v in rows)
    if rest == "parameters":
        if not session.options:
            return "No parameters set for this session (the model's defaults apply)."
        return "\n".join(f"  {k:<20}{json.dumps(v)}" for k, v in session.options.items())
    if rest == "system":
        return session.system or "No system message was specified."
    if rest == "modelfile":
        lines = [f"FROM {session.model}"]
        if session.system:
            lines.append(f'SYSTEM """{session.system}"""')
        lines += [f"PARAMETER {k} {json.dumps(v)}" for k, v in session.options.items()]
        return "\n".join(lines)
    return SHOW_HELP
