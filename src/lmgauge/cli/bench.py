"""Benchmark commands (lmgauge.bench): measure (`bench`, `load`), then read what was stored
(`runs`, `report`, `compare`). Every run lands in the store, even an interrupted one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client import Client
from ..config import load_settings
from ..display import print_rows
from ..errors import InvalidOptionError
from ..store import Store
from .console import err, out
from .options import (
    JsonFlag,
    OptionFlag,
    check_parallel,
    one_count,
    parse_counts,
    parse_options,
    split_deprecated_output,
)
from .render import (
    compare_notes,
    compare_table,
    print_listing,
    progress_bar,
    runs_table,
)

OutputFlag = Annotated[
    list[Path] | None,
    typer.Option(
        "--output",
        "-O",
        help="Write results: .json (everything, with machine and environment), "
        ".csv / .jsonl (one row per request), .png (plots), .html (report); a directory gets all "
        "five. Repeatable.",
    ),
]
PromptsFlag = Annotated[
    str | None,
    typer.Option(
        "--prompts",
        help="Built-in set: default (short+medium+long), short/tg (decode-heavy), medium, long/pp "
        "(prefill-heavy); or a file: .txt (one prompt per line), .json/.jsonl ({name, prompt|messages, num_predict}).",
    ),
]
SeedFlag = Annotated[int, typer.Option(help="Sampling seed (temperature is 0 unless -o temperature=... ).")]
ParallelFlag = Annotated[
    int | None,
    typer.Option(help="Embedded engine: sequences decoded together in one batch (default: settings.parallel)."),
]


def run_measured(kind: str, runner: Any, client: Client, config: Any, outputs: list[Path], json_out: bool) -> None:
    """Run a benchmark with a progress bar, stream .jsonl outputs, then print and write results.
    Ctrl-C: what was measured is still printed, stored and written; exit code 130."""
    from ..bench.report import check_output_paths, render, sample_line, write_outputs
    from ..bench.results import RunStore

    check_output_paths(outputs)
    runs = RunStore(Store(client.settings.db_path))
    with contextlib.ExitStack() as files:
        streams = [files.enter_context(open(p, "w")) for p in outputs if p.suffix.lower() == ".jsonl"]

        def on_sample(sample: Any) -> None:
            for f in streams:
                f.write(sample_line(sample))
                f.flush()

        with progress_bar(elapsed=True) as bar:
            task = bar.add_task(kind, total=None)

            def progress(description: str, done: int, total: int) -> None:
                bar.update(task, description=description, completed=done, total=total or None)

            run = runner(client, config, runs, progress=progress, on_sample=on_sample)
    rest = [p for p in outputs if p.suffix.lower() != ".jsonl"]
    written = write_outputs(run, rest) + [p for p in outputs if p.suffix.lower() == ".jsonl"]
    if json_out:
        out.print_json(data=run.to_dict(), default=str)
    else:
        out.print(render(run))
    for path in written:
        err.print(f"wrote {path}")
    err.print(
        f"stored as run [bold]{run.id}[/] ({run.status}); `lmgauge report {run.id} -O report.html` "
        "makes a report, `lmgauge compare` compares runs",
        markup=True,
    )
    if run.status == "interrupted":
        raise typer.Exit(130)


BenchModelsArg = Annotated[
    list[str], typer.Argument(help="Model(s) to measure (names, .gguf paths, ollama:NAME, openai:NAME@URL).")
]
BenchRepsFlag = Annotated[int, typer.Option(help="Measured repetitions of every model x prompt.")]
BenchWarmupFlag = Annotated[int, typer.Option(help="Unmeasured warmup rounds first (load, caches).")]
BenchNumPredictFlag = Annotated[
    int, typer.Option(help="Tokens to generate per request (prefill-heavy prompts cap it lower).")
]
BenchCtxFlag = Annotated[
    str | None,
    typer.Option(
        "--ctx",
        help="Context window (num_ctx, e.g. 8192 or 8k); default: "
        "the engine's (settings.num_ctx, capped at the model's limit).",
    ),
]
CtxSweepFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--ctx-sweep",
        help="Instead: measure prefill, TTFT, decode speed and KV memory at these filled "
        "context sizes, e.g. 256,512,1k,2k,4k and/or repeated (one model), and fit the cost curve.",
    ),
]
BenchAllowCacheFlag = Annotated[
    bool,
    typer.Option(
        "--allow-cache",
        help="Send identical prompts so the prefix "
        "cache can serve them (measures its benefit). Default: every "
        "request starts with a unique nonce.",
    ),
]


def bench(
    models: BenchModelsArg,
    prompts: PromptsFlag = None,
    reps: BenchRepsFlag = 5,
    warmup: BenchWarmupFlag = 1,
    num_predict: BenchNumPredictFlag = 128,
    ctx: BenchCtxFlag = None,
    ctx_sweep: CtxSweepFlag = None,
    allow_cache: BenchAllowCacheFlag = False,
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
    from ..bench.prompts import load_prompts
    from ..bench.runner import BenchConfig, SweepConfig, parse_token_counts, run_bench, run_sweep

    options = parse_options(option)
    num_ctx = one_count(ctx, "--ctx")
    check_parallel(parallel)
    with Client(parallel=parallel) as client:
        if ctx_sweep:
            if len(models) != 1:
                raise InvalidOptionError("--ctx-sweep measures one model at a time")
            points = parse_token_counts(",".join(str(n) for n in parse_counts(ctx_sweep, "--ctx-sweep", 16)))
            sweep = SweepConfig(
                model=models[0],
                points=points,
                reps=reps,
                warmup=warmup,
                num_predict=num_predict,
                num_ctx=num_ctx,
                seed=seed,
                options=options,
            )
            run_measured("context sweep", run_sweep, client, sweep, output or [], json_out)
            return
        config = BenchConfig(
            models=models,
            prompts=load_prompts(prompts),
            reps=reps,
            warmup=warmup,
            num_predict=num_predict,
            num_ctx=num_ctx,
            allow_cache=allow_cache,
            seed=seed,
            options=options,
        )
        run_measured("bench", run_bench, client, config, output or [], json_out)


LoadTargetArg = Annotated[
    str,
    typer.Argument(
        help="A model (as for `bench`), or a server URL: http://host:11434 "
        "(Ollama) or http://host:port/v1 (OpenAI-compatible)."
    ),
]
LoadModelFlag = Annotated[
    str | None, typer.Option("--model", help="With a URL: the server's model (default: its only one).")
]
ConcurrencyFlag = Annotated[
    list[str] | None, typer.Option(help="Closed loop: users in flight, e.g. 1,2,4,8 and/or repeated (default 1,2,4).")
]
RateFlag = Annotated[
    list[str] | None, typer.Option(help="Open loop instead: Poisson arrivals per second, e.g. 0.5,1,2 and/or repeated.")
]
RequestsFlag = Annotated[int | None, typer.Option(help="Requests per level (default 20 unless --duration).")]
DurationFlag = Annotated[
    str | None, typer.Option(help="Time per level, e.g. 30s or 2m (with --requests: whichever ends first).")
]
SloFlag = Annotated[
    str, typer.Option(help="Goodput counts requests meeting all of these: ttft, tpot, e2e, itl (ms or s).")
]
LoadNumPredictFlag = Annotated[int, typer.Option(help="Tokens to generate per request.")]
LoadCtxFlag = Annotated[str | None, typer.Option("--ctx", help="Context window (num_ctx, e.g. 4096 or 4k).")]
LoadWarmupFlag = Annotated[int, typer.Option(help="Unmeasured requests first.")]
LoadAllowCacheFlag = Annotated[bool, typer.Option("--allow-cache", help="Identical prompts (prefix cache hits).")]


def load(
    target: LoadTargetArg,
    model: LoadModelFlag = None,
    concurrency: ConcurrencyFlag = None,
    rate: RateFlag = None,
    requests: RequestsFlag = None,
    duration: DurationFlag = None,
    slo: SloFlag = "ttft=500ms,tpot=50ms",
    prompts: PromptsFlag = None,
    num_predict: LoadNumPredictFlag = 128,
    ctx: LoadCtxFlag = None,
    warmup: LoadWarmupFlag = 1,
    allow_cache: LoadAllowCacheFlag = False,
    seed: SeedFlag = 42,
    parallel: ParallelFlag = None,
    option: OptionFlag = None,
    output: OutputFlag = None,
    json_out: JsonFlag = False,
) -> None:
    """Load-test a model or server: throughput, output tok/s, TTFT/TPOT/ITL/E2E percentiles, errors,
    goodput under an SLO, and the saturation point, at each concurrency or arrival rate."""
    from ..bench.load import (
        LoadConfig,
        parse_levels,
        parse_slo,
        resolve_url_target,
        run_load,
    )
    from ..bench.prompts import load_prompts
    from ..config import parse_duration

    if concurrency and rate:
        raise InvalidOptionError("give either --concurrency (closed loop) or --rate (open loop), not both")
    check_parallel(parallel)
    overrides: dict[str, Any] = {"parallel": parallel}
    name = target
    if target.startswith(("http://", "https://")):
        name, extra = resolve_url_target(target, model)
        overrides.update(extra)
    elif model:
        raise InvalidOptionError("--model goes with a server URL; for a model, name it as the argument")
    config = LoadConfig(
        model=name,
        prompts=load_prompts(prompts or "short"),
        concurrency=parse_counts(concurrency or ["1,2,4"], "--concurrency") if not rate else None,
        rates=parse_levels(",".join(rate), float) if rate else None,
        requests=requests,
        duration_s=parse_duration(duration) if duration else None,
        num_predict=num_predict,
        num_ctx=one_count(ctx, "--ctx"),
        warmup=warmup,
        seed=seed,
        allow_cache=allow_cache,
        slo=parse_slo(slo),
        options=parse_options(option),
    )
    _size_decode_slots(overrides, name, config, rate, parallel)
    with Client(**overrides) as client:
        run_measured("load", run_load, client, config, output or [], json_out)


def _size_decode_slots(
    overrides: dict[str, Any], name: str, config: Any, rate: list[str] | None, parallel: int | None
) -> None:
    """As batch does: one decode slot per concurrent user on the embedded engine, so c=4 measures four
    requests sharing decode steps, not one decoding while three queue ("saturation at c=1")."""
    with Client(**overrides) as probe:  # resolving a name loads nothing
        embedded = probe.resolve(name).engine == "llamacpp"
        slots = probe.settings.parallel
    top = max(config.concurrency or [1])
    if not embedded or rate or slots >= top:
        return
    if parallel is None:
        overrides["parallel"] = top
        err.print(
            f"note: the embedded engine gets {top} parallel decode slots (the highest concurrency "
            "tested); --parallel N sets another number"
        )
    else:
        err.print(
            f"note: the embedded engine decodes {slots} request(s) at a time (--parallel {parallel}); "
            f"at higher concurrency the others queue"
        )


ReportOutputFlag = Annotated[
    list[Path] | None,
    typer.Option("--output", "-O", help="File(s) to write: .html, .json, .csv, .jsonl, .png, or a directory for all."),
]


def report(
    run_id: Annotated[str, typer.Argument(help="A run id (or a unique prefix), `latest` or `latest~N`.")],
    output: ReportOutputFlag = None,
    option: Annotated[list[str] | None, typer.Option("-o", hidden=True, help="Deprecated spelling of -O.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a stored run, or write it as an HTML report (self-contained, plots embedded) or data files."""
    bad, old = split_deprecated_output(option, "report")
    if bad:
        raise InvalidOptionError(f"report takes no model options ({bad[0]}); write files with -O/--output")
    output = (output or []) + [Path(p) for p in old]
    from ..bench.report import check_output_paths, render, write_outputs
    from ..bench.results import RunStore

    check_output_paths(output or [])
    run = RunStore(Store(load_settings().db_path)).load(run_id)
    if output:
        for path in write_outputs(run, output):
            err.print(f"wrote {path}")
    elif json_out:
        out.print_json(data=run.to_dict(), default=str)
    else:
        out.print(render(run))


def compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run (id, prefix, latest~1, ...).")],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.")],
    alpha: Annotated[float, typer.Option(help="Significance level of the Mann-Whitney U test.")] = 0.05,
    json_out: JsonFlag = False,
) -> None:
    """Per metric, B's change against A and whether it is significant (Mann-Whitney U, bootstrap CI)."""
    from ..bench.compare import compare_runs, unmatched_groups
    from ..bench.results import RunStore

    if not 0 < alpha < 1:
        raise InvalidOptionError(f"--alpha must be between 0 and 1, e.g. 0.05 (got {alpha})")
    runs = RunStore(Store(load_settings().db_path))
    a, b = runs.load(run_a), runs.load(run_b)
    rows = compare_runs(a, b, alpha=alpha)
    only_a, only_b = unmatched_groups(a, b)
    if json_out:
        out.print_json(
            data={
                "a": a.id,
                "b": b.id,
                "alpha": alpha,
                "rows": [r.to_dict() for r in rows],
                "only_in_a": only_a,
                "only_in_b": only_b,
            }
        )
        return
    print_rows(out, compare_table(a, b, rows, alpha))
    compare_notes(a, b, rows, alpha, only_a, only_b)


def runs(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only bench, sweep or load runs.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List stored benchmark runs (for `lmgauge report` and `lmgauge compare`)."""
    from ..bench.results import RunStore

    if limit < 1:
        raise InvalidOptionError("--limit must be at least 1")
    if kind not in (None, "bench", "sweep", "load"):
        raise InvalidOptionError(f"--kind must be bench, sweep or load, not {kind!r}")
    rows = RunStore(Store(load_settings().db_path)).list(limit=limit, kind=kind)
    print_listing(rows, json_out, "no stored runs yet; `lmgauge bench smollm2` makes one", runs_table)
