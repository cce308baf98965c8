"""`lmgauge run`: one answer streamed, a tool loop, or Ollama's interactive chat (repl.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..errors import InvalidOptionError, LmgaugeError
from ..types import Format, Message, Result
from .console import err, out
from .options import (
    JsonFlag,
    ModelArg,
    OptionFlag,
    SystemFlag,
    parse_format,
    parse_options,
    prompt_with_stdin,
    read_piped_stdin,
)
from .records import client_store, log_result, result_json
from .render import print_attempts, print_stats

PromptArg = Annotated[
    str | None, typer.Argument(help="The prompt. Omit it for an interactive chat; '-' reads it from stdin.")
]
VerboseFlag = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Print timings and token counts (like `ollama run --verbose`, plus TTFT and TPOT)."
    ),
]
FormatFlag = Annotated[
    str | None, typer.Option("--format", help="'json', or a JSON schema (file or inline) the answer must follow.")
]
KeepAliveFlag = Annotated[str | None, typer.Option(help="How long the model stays loaded (5m, 0, -1).")]
DraftFlag = Annotated[
    str | None,
    typer.Option(
        help="Speculative decoding: a smaller model of the same family "
        "drafts tokens the model checks in one step; 'lookup' drafts "
        "from the prompt instead. Embedded models only."
    ),
]
ToolsFlag = Annotated[
    Path | None,
    typer.Option(
        "--tools",
        help="A .py file whose functions the model may "
        "call (run for real), or a .json list of tool schemas "
        "(you type the results).",
    ),
]


def run(
    model: ModelArg,
    prompt: PromptArg = None,
    system: SystemFlag = None,
    verbose: VerboseFlag = False,
    json_out: JsonFlag = False,
    format: FormatFlag = None,
    option: OptionFlag = None,
    keep_alive: KeepAliveFlag = None,
    draft: DraftFlag = None,
    tools: ToolsFlag = None,
) -> None:
    """Answer one prompt (streamed), or chat interactively when no prompt is given.

    Text piped in is added after the prompt, like `ollama run` and `llm` do
    (`cat notes.txt | lmgauge run smollm2 "Summarize this text:"`). The model `auto` routes
    (see `lmgauge route`): the tier the router picks, or the default model without tiers."""
    options = parse_options(option)
    fmt = parse_format(format)
    with Client() as client:
        _check_model(client, model, draft)
        prompt = prompt_with_stdin(prompt, read_piped_stdin())
        if tools is not None:
            result = _run_tools(client, model, system, prompt, tools, options, fmt, keep_alive)
            _print_tool_result(result, json_out, verbose)
            log_result(client, result)
            return
        if prompt is None:
            _interactive(client, model, system, options, fmt, verbose, keep_alive)
            return
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        result = answer(client, model, messages, options, fmt, keep_alive, stream=not json_out)
        if json_out:
            out.print_json(data=result_json(result))
        elif verbose:
            print_stats(result.timings)
        log_result(client, result)


def _check_model(client: Client, model: str, draft: str | None) -> None:
    """An unknown model or a wrong draft model fails now, in one line, before anything runs."""
    if model != "auto":
        ref = client.resolve(model)
        if draft:
            client.settings.speculative.models[model] = draft
            client.speculation(ref)
    elif draft:
        raise InvalidOptionError("--draft needs a named model: `auto` picks its model per prompt")


def _run_tools(
    client: Client,
    model: str,
    system: str | None,
    prompt: str | None,
    tools: Path,
    options: dict,
    fmt: Format,
    keep_alive: str | None,
) -> Result:
    """The tool loop (tool_loop.py): the model calls, the toolbox answers, until a final answer."""
    from .. import tool_loop

    toolbox = tool_loop.load_toolbox(tools)
    if prompt is None:
        raise InvalidOptionError('--tools needs a prompt: lmgauge run MODEL "question" --tools FILE')
    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    return tool_loop.run_loop(
        lambda history: client.chat(
            model, history, options=options, format=fmt, tools=toolbox.schemas, keep_alive=keep_alive
        ),
        messages,
        toolbox,
        show=lambda kind, text: err.print(f"[cyan]{kind}:[/] {text}", markup=True, highlight=False),
        ask=lambda call: input(f"result of {call}> "),
    )


def _print_tool_result(result: Result, json_out: bool, verbose: bool) -> None:
    if json_out:
        out.print_json(data=result_json(result) | {"tool_calls": result.tool_calls})
        return
    out.print(result.content, markup=False, highlight=False)
    if verbose:
        print_stats(result.timings)


def answer(
    client: Client,
    model: str,
    messages: list[Message],
    options: dict,
    fmt: Format,
    keep_alive: str | None,
    stream: bool,
) -> Result:
    """Stream one answer; `auto` goes through the router (escalating when an answer fails a check)."""
    if model == "auto":
        from ..resilience import ResilientClient
        from ..routing import Router

        router = Router.from_settings(ResilientClient(client), client.settings, store=client_store(client))
        chunks: Any = router.answer_stream(messages, options=options, format=fmt, keep_alive=keep_alive)
    else:
        chunks = client.chat_stream(model, messages, options=options, format=fmt, keep_alive=keep_alive)
    result = None
    for chunk in chunks:
        if stream and chunk.content:
            sys.stdout.write(chunk.content)
            sys.stdout.flush()
        if chunk.done:
            result = chunk.result
    assert result is not None
    if stream:
        sys.stdout.write("\n")
        if result.done_reason == "length":
            err.print("[yellow](stopped at the num_predict / context limit)[/]", markup=True)
    if model == "auto":
        print_attempts(chunks.attempts, auto=True)
    return result


def _interactive(
    client: Client, model: str, system: str | None, options: dict, fmt: Format, verbose: bool, keep_alive: str | None
) -> None:
    """Ollama's REPL: /? for the commands, \"\"\" for multi-line messages (repl.py)."""
    from rich.markup import escape

    from .. import repl
    from ..display import show_rows

    session = repl.Session(model, system=system, options=dict(options), format=fmt, verbose=verbose)
    show = lambda: show_rows(client.show(model)) if model != "auto" else [("model", "auto (routed)")]  # noqa: E731  a short factory, read where it is used
    err.print(f"Chatting with {model}. Send a message (/? for help, /bye to quit)")
    while True:
        try:
            line = repl.read_message(input(">>> "), input)
        except (EOFError, KeyboardInterrupt):
            err.print()
            return
        if not line.strip():
            continue
        outcome = repl.handle(session, line, show)
        if outcome.quit:
            return
        if outcome.text is not None:
            err.print(escape(outcome.text))
            continue
        _interactive_turn(client, model, session, outcome.message or "", keep_alive)


def _interactive_turn(client: Client, model: str, session: Any, message: str, keep_alive: str | None) -> None:
    """One message of the REPL; a failed or interrupted turn leaves the history as it was."""
    from rich.markup import escape

    session.history.append(Message("user", message))
    try:
        result = answer(client, model, session.history, session.options, session.format, keep_alive, stream=True)
    except KeyboardInterrupt:
        session.history.pop()
        err.print("\n(interrupted)")
        return
    except LmgaugeError as exc:
        session.history.pop()  # the turn is not lost: the user still has it on screen and can retry
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
        return
    session.history.append(result.message)
    if session.verbose:
        print_stats(result.timings)
    log_result(client, result)
