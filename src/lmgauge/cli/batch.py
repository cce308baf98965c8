"""`lmgauge batch`: a JSONL file of prompts answered into a JSONL file of results (lmgauge.batch
does the work: resume, per-item errors); this command parses, wires the answerer and shows progress."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..config import Settings, load_settings
from ..errors import InvalidOptionError
from ..types import Format
from .console import err, out
from .options import (
    JsonFlag,
    SchemaFlag,
    parse_format,
    parse_options,
    split_deprecated_output,
)
from .render import progress_bar

BatchModelArg = Annotated[str, typer.Argument(help="Model name, or `auto` to route each prompt to a tier.")]
PromptsArg = Annotated[
    Path,
    typer.Argument(
        help="JSONL input: one prompt string, or an object with prompt or "
        "messages (and optional id, system, options, format), per line."
    ),
]
ResultsFlag = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-O",
        help="JSONL results file (required); if it exists, the items already answered are skipped (resume).",
    ),
]
ConcurrencyFlag = Annotated[
    int,
    typer.Option(
        "--concurrency",
        "-c",
        min=1,
        help="Requests in flight at once (for embedded models, also the engine's parallel slots).",
    ),
]
ItemOptionFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="Model option key=value for every item, repeatable (an item's own options win)."
    ),
]
BatchSystemFlag = Annotated[str | None, typer.Option(help="System message for items that have none.")]
CacheFlag = Annotated[
    bool,
    typer.Option(
        "--cache/--no-cache", help="Answer repeated prompts from the response cache (deterministic requests only)."
    ),
]
RetryFlag = Annotated[
    bool, typer.Option("--retry-errors/--keep-errors", help="On resume, run again the items that failed before.")
]
ForceFlag = Annotated[
    bool,
    typer.Option(
        "--force",
        help="On resume, answer again the items whose earlier result "
        "was asked with another model, options, format or prompt (without it, "
        "such a file is refused).",
    ),
]


def batch(
    model: BatchModelArg,
    prompts: PromptsArg,
    output: ResultsFlag = None,
    concurrency: ConcurrencyFlag = 1,
    option: ItemOptionFlag = None,
    format: SchemaFlag = None,
    system: BatchSystemFlag = None,
    use_cache: CacheFlag = False,
    retry_errors: RetryFlag = True,
    force: ForceFlag = False,
    json_out: JsonFlag = False,
) -> None:
    """Answer a file of prompts into a file of results: progress bar, per-item errors recorded,
    resumable after an interruption (run the same command again)."""
    from ..batch import read_items, request_of, resumable, run_batch
    from ..resilience import ResilientClient

    option, output = _output_file(option, output)
    base_options = parse_options(option)
    fmt = parse_format(format)
    items = read_items(prompts, system)
    settings = _with_decode_slots(load_settings(), model, concurrency)
    with Client(settings) as client:
        answer = batch_answerer(ResilientClient(client), settings, model, base_options, fmt, use_cache)
        asked = lambda item: request_of(item, model, base_options, fmt)  # noqa: E731  a short factory, read where it is used
        # Refuse a file answered with another model or options before anything runs (or --force).
        kept = resumable(items, output, asked, retry_errors=retry_errors, force=force, out_name=str(output))
        already = len([i for i in items if kept.get(i.id, {}).get("status") == "ok"])
        with progress_bar(transient=False, disable=json_out) as bar:
            done = _progress(bar, model, len(items), already)
            try:
                summary = run_batch(
                    items,
                    output,
                    answer,
                    model,
                    concurrency=concurrency,
                    retry_errors=retry_errors,
                    on_done=done,
                    force=force,
                    out_name=str(output),
                    request=asked,
                )
            except KeyboardInterrupt:
                err.print(f"interrupted; results so far are in {output}. Run the same command to resume.")
                raise typer.Exit(130) from None
    if json_out:
        out.print_json(data={**summary.__dict__, "output": str(output)})
    else:
        err.print(
            f"{summary.ok} answered, {summary.errors} errors, {summary.skipped} already done "
            f"({summary.done}/{summary.total}) -> {output}"
        )
    if summary.errors:
        err.print('failed items carry status "error" and the reason; run the command again to retry them')
        raise typer.Exit(1)  # a script must not take a partly failed batch for a finished one


def _output_file(option: list[str] | None, output: Path | None) -> tuple[list[str], Path]:
    """The results file: -O, or the deprecated `-o FILE` (a value without '=')."""
    options, old = split_deprecated_output(option, "batch")
    if old:
        if output is not None or len(old) > 1:
            raise InvalidOptionError(
                f"-o {old[0]}: -o is a model option (key=value); give the output once, with -O/--output"
            )
        output = Path(old[0])
    if output is None:
        raise InvalidOptionError("give the results file with -O/--output results.jsonl")
    return options, output


def _with_decode_slots(settings: Settings, model: str, concurrency: int) -> Settings:
    """Embedded models: one decode slot per concurrent request."""
    with Client(settings) as probe:
        names = (list(settings.routing.tiers.values()) or [settings.default_model]) if model == "auto" else [model]
        if any(probe.resolve(n).engine == "llamacpp" for n in names):
            settings = settings.model_copy(update={"parallel": max(settings.parallel, concurrency)})
    return settings


def _progress(bar: Any, model: str, total: int, already: int) -> Callable[[dict], None]:
    """The per-item callback: advance the bar, count errors in its label."""
    job = bar.add_task(f"{model}", total=total, completed=already)
    errors = 0

    def done(record: dict) -> None:
        nonlocal errors
        if record["status"] != "ok":
            errors += 1
        bar.update(job, advance=1, description=f"{model} ({errors} errors)" if errors else model)

    return done


def batch_answerer(
    caller: Any, settings: Settings, model: str, base_options: dict, fmt: Format, use_cache: bool
) -> Callable[[Any], tuple[Any, str | None, bool]]:
    """The per-item work of `lmgauge batch`: a model call (or a routed one), through the cache."""
    from ..cache import ResponseCache, as_request
    from ..routing import Router

    router = Router.from_settings(caller, settings) if model == "auto" else None
    cache = ResponseCache.from_settings(settings) if use_cache else None

    def answer(item: Any) -> tuple[Any, str | None, bool]:
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
