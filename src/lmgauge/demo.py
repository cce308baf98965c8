"""`lmgauge demo`: a short tour of the main job on the embedded default, in well under 2 minutes.

It answers a prompt with stats, extracts JSON under a schema, measures the model for a few
repetitions, sizes its memory against what this process really grew by, shows a conversation's
exact token budget, and writes a small report (Markdown + JSON) that a user can keep, plus
the benchmark's HTML report (lmgauge.bench: tables and plots in one file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .bench.prompts import BenchPrompt
from .bench.report import write_outputs
from .bench.results import Run, RunStore, summarize_run
from .bench.runner import BenchConfig, run_bench
from .client import Client
from .models import inspect_gguf
from .sizing import estimate
from .store import Store
from .types import Message, Timings

QUESTION = "Why is the sky blue? Answer in three sentences."
EXTRACT_TEXT = "Ada Lovelace was born in 1815 in London and wrote the first computer program."
EXTRACT_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "born": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "born", "city"],
}
GREEDY = {"temperature": 0, "seed": 42}
DEMO_PROMPT = BenchPrompt("poem", [{"role": "user", "content": "Write a short poem about the sea."}], kind="tg")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def run_demo(client: Client, console: Console, model: str, out_dir: Path, reps: int = 5) -> dict[str, Any]:
    report: dict[str, Any] = {"model": model, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    proc = psutil.Process()

    # 1. Where the model comes from, and what it is
    ref = client.resolve(model)
    console.rule(f"[bold]1. The model: {model}")
    console.print(f"engine [cyan]{ref.engine}[/], from [cyan]{ref.source}[/]: {ref.target}")
    info = inspect_gguf(ref.target) if ref.engine == "llamacpp" else None
    if info:
        console.print(
            f"{info.architecture}, {info.parameters / 1e6:.0f}M parameters, {info.quantization}, "
            f"{info.n_layer} layers, {info.n_head}/{info.n_head_kv} query/KV heads, "
            f"trained context {info.n_ctx_train} tokens"
        )
        report["gguf"] = info.summary()

    # 2. One answer, streamed, with the stats block
    console.rule("[bold]2. An answer, with its real costs")
    console.print(f"[dim]>>> {QUESTION}[/]")
    rss_before = proc.memory_info().rss
    result = None
    for chunk in client.chat_stream(model, [Message("user", QUESTION)], options={**GREEDY, "num_predict": 96}):
        console.print(chunk.content, end="", markup=False, highlight=False)
        result = chunk.result or result
    console.print()
    rss_after = proc.memory_info().rss
    assert result is not None, "the last chunk carries the result"
    _stats_table(console, result.timings)
    report["answer"] = {"text": result.content, "timings": result.timings.to_dict()}

    # 3. Structured output: the grammar makes the JSON valid by construction
    console.rule("[bold]3. Structured output under a JSON schema")
    extract = client.chat(
        model,
        [Message("user", f"Extract name, birth year and city as JSON: {EXTRACT_TEXT}")],
        options={**GREEDY, "num_predict": 80},
        format=EXTRACT_SCHEMA,
    )
    parsed = json.loads(extract.content)
    console.print_json(data=parsed)
    report["structured"] = {"schema": EXTRACT_SCHEMA, "output": parsed}

    # 4. A small benchmark: lmgauge bench's own runner (warmup excluded, a unique nonce per
    # request so nothing is served from cache, every request stored as a run)
    console.rule(f"[bold]4. Measured over {reps} repetitions")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=reps + 1)
        bench_run = run_bench(
            client,
            BenchConfig(models=[model], prompts=[DEMO_PROMPT], reps=reps, warmup=1, num_predict=64),
            RunStore(Store(client.settings.db_path)),
            progress=lambda what, done, total: progress.update(task, completed=done, description=what),
        )
    bench = _summarize(bench_run)
    table = Table("metric", "p50", "p90", "n", box=None)
    for name, values in bench.items():
        table.add_row(name, f"{values['p50']:.1f}", f"{values['p90']:.1f}", str(values["n"]))
    console.print(table)
    report["benchmark"] = bench
    report["benchmark_run"] = bench_run.id

    # 5. Memory: the estimate before loading vs what this process really grew by
    console.rule("[bold]5. Memory: estimated vs measured")
    if info:
        loaded = next((m for m in client.loaded() if m.path == ref.target), None)
        num_ctx = loaded.context_length if loaded else client.settings.num_ctx
        rows = []
        for ctx in sorted({2048, num_ctx, info.n_ctx_train}):
            e = estimate(info, ctx, kv_type=client.settings.kv_type, n_parallel=client.settings.parallel)
            rows.append({"num_ctx": ctx, **e.to_dict()})
        table = Table("num_ctx", "weights", "KV cache", "compute", "total", box=None)
        for row in rows:
            table.add_row(
                str(row["num_ctx"]),
                _mib(row["weights_bytes"]),
                _mib(row["kv_bytes"]),
                _mib(row["compute_bytes"]),
                _mib(row["total_bytes"]),
            )
        console.print(table)
        growth = rss_after - rss_before
        console.print(
            f"this process grew by [bold]{_mib(growth)}[/] when it loaded the model at num_ctx {num_ctx} "
            f"(RSS now {_mib(proc.memory_info().rss)}); `lmgauge size` predicts any other setting"
        )
        report["memory"] = {"estimates": rows, "measured_rss_growth_bytes": growth, "num_ctx": num_ctx}

    # 6. Context budget: exact tokens, template included
    console.rule("[bold]6. The context budget of a conversation")
    if ref.engine == "llamacpp":
        from .engines.llamacpp import LlamaCppEngine

        engine = client.engine(ref)
        assert isinstance(engine, LlamaCppEngine)
        conversation = [Message("user", QUESTION), result.message, Message("user", "And why are sunsets red?")]
        used = len(engine.chat_tokens(ref.target, conversation))
        window = client.settings.num_ctx
        share = used / window
        console.print(
            f"{len(conversation)} messages = {used} tokens of a {window}-token window ({share:.1%}); "
            "lmgauge alerts at 75% and refuses at 100% instead of silently truncating"
        )
        report["context"] = {"messages": len(conversation), "tokens": used, "window": window}

    # 7. The report
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(_markdown(report))
    write_outputs(bench_run, [out_dir / "benchmark.html"])
    console.rule("[bold]Done")
    console.print(
        f"report written to {out_dir / 'report.md'} and {out_dir / 'report.json'}; the benchmark "
        f"with its plots to {out_dir / 'benchmark.html'} (run {bench_run.id}: `lmgauge report "
        f"{bench_run.id}`, `lmgauge compare`)"
    )
    return report


def _stats_table(console: Console, t: Timings) -> None:
    from .display import stats_rows  # one definition of the stats block, shared with `run --verbose`

    for label, value in stats_rows(t):
        console.print(f"[dim]{label + ':':<24}[/]{value}")


def _summarize(run: Run) -> dict[str, dict[str, float]]:
    group = summarize_run(run)[0]["metrics"]
    names = {
        "TTFT ms": "ttft_ms",
        "TPOT ms": "tpot_ms",
        "decode tok/s": "decode_tps",
        "prefill tok/s": "prefill_tps",
        "E2E ms": "e2e_ms",
    }
    return {
        label: {"p50": group[key]["p50"], "p90": group[key]["p90"], "n": group[key]["n"]}
        for label, key in names.items()
        if group[key]["n"]
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# lmgauge demo: {report['model']}", "", f"Run {report['started']}.", ""]
    if "gguf" in report:
        g = report["gguf"]
        lines += [
            f"Model: {g['architecture']}, {g['parameters'] / 1e6:.0f}M parameters, {g['quantization']}, "
            f"{g['n_layer']} layers, trained context {g['n_ctx_train']}.",
            "",
        ]
    lines += ["## Benchmark", "", "| metric | p50 | p90 | n |", "|---|---|---|---|"]
    for name, v in report["benchmark"].items():
        lines.append(f"| {name} | {v['p50']:.1f} | {v['p90']:.1f} | {v['n']} |")
    if "memory" in report:
        lines += [
            "",
            "## Memory estimate",
            "",
            "| num_ctx | weights MiB | KV MiB | compute MiB | total MiB |",
            "|---|---|---|---|---|",
        ]
        for r in report["memory"]["estimates"]:
            lines.append(
                f"| {r['num_ctx']} | {r['weights_bytes'] / 2**20:.1f} | {r['kv_bytes'] / 2**20:.1f} | "
                f"{r['compute_bytes'] / 2**20:.1f} | {r['total_bytes'] / 2**20:.1f} |"
            )
        lines.append(
            f"\nMeasured RSS growth on load: {report['memory']['measured_rss_growth_bytes'] / 2**20:.1f} MiB "
            f"at num_ctx {report['memory']['num_ctx']}."
        )
    lines += [
        "",
        "## Answer",
        "",
        report["answer"]["text"],
        "",
        "## Structured output",
        "",
        "```json",
        json.dumps(report["structured"]["output"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
