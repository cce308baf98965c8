"""Everything a run becomes on the way out: tables (rich on screen, HTML in the report), CSV,
JSON, JSON Lines, PNG plots and one self-contained HTML report.

Tables are built once as plain data (`tables(run)`) and rendered twice, so the screen and the
report always agree. Plots use matplotlib's Agg backend (no display needed) and are embedded in
the HTML as base64 PNGs, so the report is a single file that opens anywhere.

File formats (`write_outputs` picks by extension):
  .json   the whole run: config, machine, models (engine, version, sha256, memory), summary,
          analysis and every sample (schema: RUN_SCHEMA)
  .csv    one row per request (SAMPLE_FIELDS; itl_ms as a JSON list)
  .jsonl  one JSON object per request, the same fields (streamed while the run goes)
  .png    the run's plots in one figure
  .html   the report
A path without a suffix is a directory: all five are written there as run-<id>.*.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..errors import InvalidOptionError
from .results import SAMPLE_FIELDS, Run, Sample, metric, summarize_run

FORMATS = ("json", "csv", "jsonl", "png", "html")

_SUMMARY_SCHEMA = {
    "type": "object",
    "required": ["n", "mean", "sd", "min", "max", "p50", "p90", "p95", "p99"],
    "properties": {k: {"type": ["number", "null"]} for k in ("mean", "sd", "min", "max", "p50", "p90", "p95", "p99")}
    | {"n": {"type": "integer"}},
}
_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"]}

# The JSON file's schema (validated in tests; documented in docs/bench.md).
RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "schema_version",
        "id",
        "kind",
        "status",
        "started",
        "finished",
        "config",
        "machine",
        "models",
        "summary",
        "analysis",
        "samples",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "id": {"type": "string"},
        "kind": {"enum": ["bench", "sweep", "load"]},
        "status": {"enum": ["running", "complete", "interrupted", "failed"]},
        "started": {"type": "number"},
        "finished": _NUM,
        "config": {"type": "object"},
        "machine": {
            "type": "object",
            "required": ["cpu", "cores_physical", "cores_logical", "ram_bytes", "gpus", "os", "python", "packages"],
        },
        "models": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["engine", "engine_version", "target", "source"],
                "properties": {
                    "file_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "memory": {"type": "object", "required": ["process", "rss_bytes"]},
                },
            },
        },
        "summary": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model", "group", "n", "ok", "errors", "metrics"],
                "properties": {"metrics": {"type": "object", "additionalProperties": _SUMMARY_SCHEMA}},
            },
        },
        "analysis": {"type": "object"},
        "samples": {
            "type": "array",
            "items": {
                "type": "object",
                "required": SAMPLE_FIELDS,
                "properties": {
                    "status": {"enum": ["ok", "error", "skipped", "cancel"]},
                    "ttft_ms": _NUM,
                    "tpot_ms": _NUM,
                    "e2e_ms": _NUM,
                    "decode_tps": _NUM,
                    "prefill_tps": _NUM,
                    "prompt_tokens": _INT,
                    "output_tokens": _INT,
                    "cached_tokens": _INT,
                    "itl_ms": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
    },
}


# --- formatting ----------------------------------------------------------------------------------


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}" if abs(v) >= 0.1 else f"{v:.1%}"


def _mean_sd(summary: dict[str, Any]) -> str:
    if summary.get("mean") is None:
        return "-"
    if summary.get("sd") is None:
        return fmt_num(summary["mean"])
    return f"{summary['mean']:.1f} ± {summary['sd']:.1f}"


# --- tables as data ------------------------------------------------------------------------------


@dataclass
class TableData:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def tables(run: Run) -> list[TableData]:
    """The run's results as tables: the main one for its kind, then memory."""
    out = {"bench": _bench_tables, "sweep": _sweep_tables, "load": _load_tables}[run.kind](run)
    out.append(memory_table(run))
    return out


def _bench_tables(run: Run) -> list[TableData]:
    overview = TableData(
        "Per model and prompt (medians; n = successful requests)",
        [
            "model",
            "prompt",
            "n",
            "err",
            "tok in",
            "tok out",
            "TTFT ms",
            "TPOT ms",
            "E2E ms",
            "decode tok/s",
            "prefill tok/s",
        ],
    )
    detail = TableData(
        "Distributions (n, mean, sd, percentiles)",
        ["model · prompt", "metric", "n", "mean", "sd", "p50", "p90", "p95", "p99"],
    )
    speculated = any(s.spec_mode for s in run.samples)
    if speculated:
        overview.columns += ["accepted", "acc/step", "draft ms", "verify ms"]
    for g in summarize_run(run):
        m = g["metrics"]
        overview.rows.append(
            [
                g["model"],
                g["group"],
                str(g["ok"]),
                _errors(g),
                fmt_num(metric(g, "prompt_tokens"), 0),
                fmt_num(metric(g, "output_tokens"), 0),
                fmt_ms(metric(g, "ttft_ms")),
                fmt_ms(metric(g, "tpot_ms")),
                fmt_ms(metric(g, "e2e_ms")),
                _mean_sd(m["decode_tps"]),
                fmt_num(metric(g, "prefill_tps")),
            ]
        )
        if speculated:
            acceptance = metric(g, "spec_acceptance")
            overview.rows[-1] += [
                "-" if acceptance is None else f"{acceptance:.0%}",
                fmt_num(metric(g, "spec_mean_accepted")),
                fmt_ms(metric(g, "spec_draft_ms")),
                fmt_ms(metric(g, "spec_verify_ms")),
            ]
        for name, label, fmt in DETAIL_METRICS:
            d = m[name]
            detail.rows.append(
                [
                    f"{g['model']} · {g['group']}",
                    label,
                    str(d["n"]),
                    fmt(d["mean"]),
                    fmt(d["sd"]),
                    fmt(d["p50"]),
                    fmt(d["p90"]),
                    fmt(d["p95"]),
                    fmt(d["p99"]),
                ]
            )
    overview.notes.append(
        "TTFT, TPOT, E2E (and ITL): client clock. decode/prefill tok/s: engine clock, mean ± sd. "
        "Prefill counts only evaluated tokens: the few template tokens served from the prefix "
        "cache (see cached_tokens) are not work done."
    )
    if speculated:
        overview.notes.append(
            "Speculative decoding (medians): accepted = drafted tokens the model agreed with; "
            "acc/step = accepted per verification step; draft/verify ms = engine time spent "
            "drafting and in the verifying decodes."
        )
    overview.notes += _status_notes(run)
    return [overview, detail]


DETAIL_METRICS = (
    ("ttft_ms", "TTFT ms", lambda v: fmt_ms(v)),
    ("tpot_ms", "TPOT ms", lambda v: fmt_ms(v)),
    ("itl_ms", "ITL ms (pooled)", lambda v: fmt_ms(v)),
    ("e2e_ms", "E2E ms", lambda v: fmt_ms(v)),
    ("decode_tps", "decode tok/s", lambda v: fmt_num(v)),
    ("prefill_tps", "prefill tok/s", lambda v: fmt_num(v)),
    ("engine_tpot_ms", "TPOT ms (engine)", lambda v: fmt_ms(v)),
)


def _errors(g: dict[str, Any]) -> str:
    parts = [f"{g['errors']}"]
    if g.get("skipped"):
        parts.append(f"+{g['skipped']} skipped")
    if g.get("cancelled"):
        parts.append(f"+{g['cancelled']} cancelled")
    return " ".join(parts)


def _status_notes(run: Run) -> list[str]:
    notes = []
    if any(s.tokens_from == "chunks" for s in run.samples):
        notes.append(
            "The server reported no token counts: output tokens are the streamed chunks (one token each "
            "on llama.cpp servers), and prompt tokens are unknown."
        )
    if run.status == "interrupted":
        notes.append(f"INTERRUPTED: partial results ({len(run.samples)} requests measured before Ctrl-C).")
    empty = [s for s in run.samples if s.status == "ok" and not s.output_tokens]
    if empty:
        notes.append(
            f"{len(empty)} request(s) succeeded with an empty answer (0 output tokens): an immediate "
            "end of sequence, or a server that cut the stream off (llama-cpp-python's server does when "
            "a new request arrives, unless started with --interrupt_requests False)."
        )
    errors = [s for s in run.samples if s.status == "error"]
    if errors:
        first = errors[0]
        notes.append(f"{len(errors)} request(s) failed; first: {first.model} / {first.prompt}: {first.error}")
    load = (run.machine.get("load_avg") or [0])[0]
    cores = run.machine.get("cores_logical") or 1
    if load and load > 0.5 * cores:
        notes.append(
            f"The machine was busy when the run started (load average {load} on {cores} cores): timings are noisy."
        )
    return notes


def _sweep_tables(run: Run) -> list[TableData]:
    a = run.analysis
    t = TableData(
        "Context sweep: medians per filled-context size",
        [
            "target ctx",
            "prompt tok",
            "prefill ms (engine)",
            "TTFT ms",
            "prefill tok/s",
            "decode tok/s",
            "TPOT ms",
            "KV cache (est.)",
            "engine RSS",
            "n",
        ],
    )
    for p in a.get("points", []):
        t.rows.append(
            [
                str(p["ctx"]),
                fmt_num(p["prompt_tokens"], 0),
                fmt_ms(p["engine_prefill_ms"]),
                fmt_ms(p["ttft_ms"]),
                fmt_num(p["prefill_tps"]),
                fmt_num(p["decode_tps"]),
                fmt_ms(p["tpot_ms"]),
                fmt_bytes(p["kv_bytes"]) if p.get("kv_bytes") else "-",
                fmt_bytes(p["engine_rss_bytes"]),
                str(p["n"]),
            ]
        )
    t.notes += sweep_findings(a)
    t.notes += _status_notes(run)
    return [t]


def sweep_findings(a: dict[str, Any]) -> list[str]:
    notes = []
    fit = a.get("prefill_fit") or a.get("ttft_fit")
    if fit:
        which = "prefill" if "prefill_fit" in a else "TTFT"
        at = fit["at_largest"]
        points = fit.get("points")
        if fit.get("exact"):  # runs stored before `exact` existed show their R² as before
            quality = (
                f"{points} context sizes for 3 parameters: the curve passes through them by construction, "
                "so R² says nothing about the shape; sweep 4 or more sizes to test it"
            )
        else:
            quality = f"R² {fit['r2']:.3f} over {fit['n']} samples" + (f" at {points} context sizes" if points else "")
        notes.append(
            f"{which} time fit: {fit['a']:.4g} ms + {fit['b']:.4g} ms x n + {fit['c']:.3g} ms x n² "
            f"(n = prompt tokens; {quality})"
        )
        if at["quadratic_share"] is not None:
            notes.append(f"at {at['tokens']:.0f} tokens the n² term is {at['quadratic_share']:.0%} of the {which} time")
        if fit["exponent"] is not None:
            notes.append(
                f"measured scaling exponent {fit['exponent']:.2f} (slope of log time over log tokens: "
                "1 = linear, 2 = quadratic)"
            )
    theory = a.get("theory", {})
    if theory.get("c_measured_over_theory") is not None:
        notes.append(
            f"FLOP theory: if time followed multiply-adds, the n² coefficient would be b x "
            f"{theory['attention_per_linear']:.3g} = {theory['c_theory']:.3g} ms; measured "
            f"{theory['c_measured_over_theory']:.2f}x that"
        )
    d = a.get("decode_fit")
    if d:
        notes.append(
            f"decode: {d['ms_per_token_at_0']:.2f} ms per token at an empty context, "
            f"{d['ms_per_token_per_1k_ctx']:+.3f} ms per token for every 1k tokens of context"
        )
    return notes


def _load_tables(run: Run) -> list[TableData]:
    a = run.analysis
    open_loop = a.get("mode") == "open"
    slo = ", ".join(f"{k.removesuffix('_ms')} <= {v:g} ms" for k, v in (a.get("slo") or {}).items())
    t = TableData(
        f"Load test ({a.get('mode', '?')} loop): per level; goodput = requests/s meeting the SLO ({slo})",
        [
            "level",
            "ok/sent",
            "err %",
            "req/s",
            "out tok/s",
            "goodput",
            "TTFT p50/p95/p99 ms",
            "TPOT p50/p95 ms",
            "ITL p95 ms",
            "E2E p50/p99 ms",
        ]
        + (["send lag p50 ms"] if open_loop else []),
    )
    for lv in a.get("levels", []):
        ttft, tpot, e2e = lv["ttft_ms"], lv["tpot_ms"], lv["e2e_ms"]
        t.rows.append(
            [
                lv["level"],
                f"{lv['ok']}/{lv['requests']}",
                fmt_pct(lv["error_rate"]),
                fmt_num(lv["throughput_rps"], 2),
                fmt_num(lv["output_tps"]),
                fmt_num(lv["goodput_rps"], 2),
                f"{fmt_ms(ttft['p50'])} / {fmt_ms(ttft['p95'])} / {fmt_ms(ttft['p99'])}",
                f"{fmt_ms(tpot['p50'])} / {fmt_ms(tpot['p95'])}",
                fmt_ms(lv["itl_ms"]["p95"]),
                f"{fmt_ms(e2e['p50'])} / {fmt_ms(e2e['p99'])}",
            ]
            + ([fmt_ms(lv["queue_delay_ms"]["p50"])] if open_loop else [])
        )
    t.notes += load_findings(a)
    t.notes += _status_notes(run)
    return [t]


def load_findings(a: dict[str, Any]) -> list[str]:
    notes = []
    if a.get("saturation"):
        s = a["saturation"]
        notes.append(f"saturation at {s['level']} ({s['throughput_rps']:.2f} req/s): {s['reason']}")
    elif a.get("saturation_note"):
        notes.append(a["saturation_note"])
    if a.get("peak"):
        p = a["peak"]
        notes.append(
            f"peak throughput {fmt_num(p['throughput_rps'], 2)} req/s, {fmt_num(p['output_tps'])} "
            f"output tok/s at {p['level']}"
        )
    return notes


def memory_table(run: Run) -> TableData:
    t = TableData(
        "Memory: the engine process, measured, beside the sizing estimate",
        ["model", "engine process", "RSS", "peak RSS", "RSS growth", "estimate", "num_ctx", "load ms"],
    )
    kinds = set()
    for name, info in run.models.items():
        mem = info.get("memory") or {}
        est = info.get("estimate") or {}
        kinds.add("embedded" if info.get("engine") == "llamacpp" else "local" if mem.get("pid") else "unknown")
        t.rows.append(
            [
                name,
                mem.get("process", "unknown"),
                fmt_bytes(mem.get("rss_bytes")),
                fmt_bytes(mem.get("peak_rss_bytes")),
                fmt_bytes(mem.get("rss_growth_bytes")) if mem.get("rss_growth_bytes") is not None else "-",
                fmt_bytes(est.get("total_bytes")) if est else "-",
                str(info.get("num_ctx") or "-"),
                fmt_ms(info.get("load_ms")),
            ]
        )
    if "embedded" in kinds:
        t.notes.append(
            "Embedded engine: it runs in this process, so RSS includes Python; the growth from before the "
            "model was loaded to the end of the run is the model's share, comparable with the estimate "
            "(weights + KV cache + buffers, `lmgauge size`)."
        )
    if "local" in kinds:
        t.notes.append(
            "Local server: the RSS of the process listening on its port, children included (Ollama runs "
            "models in child processes); growth is during the run (it may have loaded the model before)."
        )
    if "unknown" in kinds:
        t.notes.append(
            "unknown: the server is not on this machine (or its process is not visible), so its memory "
            "cannot be measured; the client's own memory is never reported in its place."
        )
    return t


def machine_rows(run: Run) -> list[tuple[str, str]]:
    m = run.machine
    rows = [
        ("run", f"{run.id} ({run.kind}, {run.status})"),
        ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))),
        ("cpu", f"{m.get('cpu')} ({m.get('cores_physical')} cores, {m.get('cores_logical')} threads)"),
        ("ram", fmt_bytes(m.get("ram_bytes"))),
        ("gpu", ", ".join(m.get("gpus") or []) or "none"),
        ("os", f"{m.get('os')} {m.get('arch', '')}, Python {m.get('python')}"),
        ("load average", " ".join(str(x) for x in m.get("load_avg") or [])),
    ]
    for name, info in run.models.items():
        rows.append((f"model {name}", f"{info.get('engine')}: {info.get('target')}"))
        rows.append(("  engine", str(info.get("engine_version"))))
        if info.get("file_sha256"):
            rows.append(("  sha256", info["file_sha256"]))
    options = run.config.get("request_options") or {k: run.config.get(k) for k in ("num_predict", "seed")}
    rows.append(("options", json.dumps(options)))
    return rows


# --- on screen -----------------------------------------------------------------------------------


def render(run: Run) -> RenderableType:
    """The run's tables for a rich console."""
    parts: list[RenderableType] = []
    for t in tables(run):
        table = Table(title=t.title, title_justify="left", box=None, header_style="bold")
        for column in t.columns:
            table.add_column(column, overflow="fold")  # a narrow terminal wraps values, never hides them
        for row in t.rows:
            table.add_row(*row)
        parts.append(table)
        for note in t.notes:
            parts.append(Text("  " + note, style="dim"))
        parts.append(Text(""))
    return Group(*parts)


# --- files ---------------------------------------------------------------------------------------


def write_outputs(run: Run, paths: Iterable[Path]) -> list[Path]:
    """Write each path in the format its suffix names (a directory: every format)."""
    written = []
    for path in paths:
        path = Path(path).expanduser()
        suffix = path.suffix.lower().lstrip(".")
        if not suffix or path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            for fmt in FORMATS:
                written.append(write(run, path / f"run-{run.id}.{fmt}", fmt))
        else:
            written.append(write(run, path, suffix))
    return written


def check_output_paths(paths: Iterable[Path]) -> None:
    """Fail before a run, not after it, on an output nobody can write."""
    for path in paths:
        path = Path(path).expanduser()
        suffix = path.suffix.lower().lstrip(".")
        if suffix and not path.is_dir() and suffix not in FORMATS:
            raise InvalidOptionError(
                f"--output {path}: unknown format .{suffix}; use .json, .csv, .jsonl, .png, .html or a directory"
            )
        parent = path if not suffix else path.parent
        if parent.exists() and not parent.is_dir():
            raise InvalidOptionError(f"--output {path}: {parent} is not a directory")


def write(run: Run, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(run.to_dict(), indent=2, default=str))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            write_csv(run.samples, f)
    elif fmt == "jsonl":
        with open(path, "w") as f:
            for s in run.samples:
                f.write(sample_line(s))
    elif fmt == "png":
        fig = figure(run)
        fig.savefig(path, dpi=110)
        _close(fig)
    elif fmt == "html":
        path.write_text(html_report(run))
    else:
        raise InvalidOptionError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")
    return path


def write_csv(samples: list[Sample], f: IO[str]) -> None:
    writer = csv.DictWriter(f, fieldnames=SAMPLE_FIELDS)
    writer.writeheader()
    for s in samples:
        row = s.to_dict()
        row["itl_ms"] = json.dumps([round(x, 4) for x in s.itl_ms])
        writer.writerow(row)


def sample_line(sample: Sample) -> str:
    return json.dumps(sample.to_dict(), default=str) + "\n"


# --- plots ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and over ssh
    import matplotlib.pyplot as plt

    return plt


def _close(fig: Any) -> None:
    _pyplot().close(fig)


def figure(run: Run) -> Any:
    """One figure with the run's plots (a 2 x 3 grid for bench runs, 2 x 2 otherwise)."""
    plt = _pyplot()
    columns = 3 if run.kind == "bench" else 2
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns, 8.5), squeeze=False)
    {"bench": _plot_bench, "sweep": _plot_sweep, "load": _plot_load}[run.kind](run, axes)
    fig.suptitle(f"lmgauge {run.kind} {run.id}" + (" (interrupted)" if run.status == "interrupted" else ""))
    fig.tight_layout()
    return fig


def _plot_bench(run: Run, axes: Any) -> None:
    groups: dict[str, list[Sample]] = {}
    for s in run.samples:
        if s.status == "ok":
            groups.setdefault(f"{s.model}\n{s.prompt}", []).append(s)
    labels = list(groups)
    positions = list(range(1, len(labels) + 1))

    def values(key: str, name: str) -> list[float]:
        return [getattr(s, name) for s in groups[key] if getattr(s, name) is not None]

    def box(ax: Any, name: str, title: str) -> None:
        data = [values(k, name) for k in labels]
        keep = [i for i, d in enumerate(data) if d]
        if keep:
            ax.boxplot([data[i] for i in keep], positions=[positions[i] for i in keep], widths=0.5)
            for i in keep:
                ax.plot([positions[i]] * len(data[i]), data[i], "o", alpha=0.5, markersize=4)
            flat = [v for i in keep for v in data[i]]
            if min(flat) > 0 and max(flat) / min(flat) > 20:
                ax.set_yscale("log")  # short and long prompts differ by orders of magnitude
        ax.set_xticks(positions, labels, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)

    def bars(ax: Any, name: str, title: str, color: str) -> None:
        data = [values(k, name) for k in labels]
        means = [sum(d) / len(d) if d else 0 for d in data]
        ax.bar(positions, means, 0.6, yerr=[_sd(d) for d in data], capsize=4, color=color)
        for x, m in zip(positions, means, strict=True):
            ax.annotate(
                f"{m:.1f}", (x, m), ha="center", va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points"
            )
        ax.set_xticks(positions, labels, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("tok/s")
        ax.grid(axis="y", alpha=0.3)

    box(axes[0][0], "ttft_ms", "Time to first token (client clock)")
    box(axes[0][1], "tpot_ms", "Time per output token (client clock)")
    box(axes[0][2], "e2e_ms", "End-to-end latency (client clock)")
    ax = axes[1][0]
    pooled: dict[str, list[float]] = {}
    for s in run.samples:
        if s.status == "ok":
            pooled.setdefault(s.model, []).extend(s.itl_ms)
    for model, gaps in pooled.items():
        if gaps:
            ax.hist(gaps, bins=50, alpha=0.6, label=f"{model} (n={len(gaps)})")
    ax.set_title("Inter-token latency, pooled (client clock)")
    ax.set_xlabel("ms")
    ax.set_ylabel("count")
    if any(pooled.values()):
        ax.legend(fontsize=8)
    bars(axes[1][1], "decode_tps", "Decode tok/s (engine clock, mean ± sd)", "tab:blue")
    bars(axes[1][2], "prefill_tps", "Prefill tok/s (engine clock, mean ± sd)", "tab:orange")


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _plot_sweep(run: Run, axes: Any) -> None:
    import numpy as np

    a = run.analysis
    ok = [s for s in run.samples if s.status == "ok"]
    ax = axes[0][0]
    use_engine = "prefill_fit" in a
    xs = [(s.prompt_tokens or 0) - (s.cached_tokens or 0) if use_engine else s.prompt_tokens for s in ok]
    ys = [s.engine_prefill_ms if use_engine else s.ttft_ms for s in ok]
    ax.plot(xs, ys, "o", alpha=0.5, label="measured")
    fit = a.get("prefill_fit") or a.get("ttft_fit")
    known = [x for x in xs if x is not None]
    if fit and known:
        grid = np.linspace(0, max(known) * 1.05, 200)
        ax.plot(
            grid,
            fit["a"] + fit["b"] * grid + fit["c"] * grid**2,
            "-",
            label="fit a + bn + cn² (exact through 3 sizes)"
            if fit.get("exact")
            else f"fit a + bn + cn² (R² {fit['r2']:.3f})",
        )
        ax.plot(grid, fit["a"] + fit["b"] * grid, ":", label="linear part a + bn")
        theory = a.get("theory", {})
        if theory.get("c_theory") is not None:
            ax.plot(
                grid,
                fit["a"] + fit["b"] * grid + theory["c_theory"] * grid**2,
                "--",
                label="a + bn + theoretical n² attention term",
            )
    ax.set_title(("Prefill time (engine clock)" if use_engine else "TTFT") + " vs prompt tokens")
    ax.set_xlabel("prompt tokens evaluated")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    points = a.get("points", [])
    ctx = [p["prompt_tokens"] or p["ctx"] for p in points]
    ax = axes[0][1]
    ax.plot([s.prompt_tokens for s in ok], [s.ttft_ms for s in ok], "o", alpha=0.5, label="TTFT (client)")
    ax.plot(ctx, [p["ttft_ms"] for p in points], "-", label="median")
    if points:
        ax2 = ax.twinx()
        ax2.plot(ctx, [p["prefill_tps"] for p in points], "s--", color="tab:green", label="prefill tok/s")
        ax2.set_ylabel("prefill tok/s")
        ax2.legend(fontsize=8, loc="lower right")
    ax.set_title("Time to first token vs filled context")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)

    ax = axes[1][0]
    ax.plot([s.prompt_tokens for s in ok], [s.decode_tps for s in ok], "o", alpha=0.5, label="per request")
    ax.plot(ctx, [p["decode_tps"] for p in points], "-", label="median")
    ax.set_title("Decode speed vs filled context (engine clock)")
    ax.set_xlabel("context tokens before decoding")
    ax.set_ylabel("tok/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1][1]
    kv = [p.get("kv_bytes") for p in points]
    if any(k is not None for k in kv):
        ax.plot(ctx, [(k or 0) / 2**20 for k in kv], "o-", label="KV cache holding n tokens (estimate)")
    rss = [p.get("engine_rss_bytes") for p in points]
    if any(r is not None for r in rss):
        ax.plot(ctx, [(r or 0) / 2**20 for r in rss], "s--", label="engine RSS (measured)")
    ax.set_title("Memory vs filled context")
    ax.set_xlabel("tokens")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _plot_load(run: Run, axes: Any) -> None:
    a = run.analysis
    levels = a.get("levels", [])
    x = list(range(len(levels)))
    names = [lv["level"] for lv in levels]
    sat = a.get("saturation")
    sat_x = names.index(sat["level"]) if sat and sat["level"] in names else None

    def finish(ax: Any, title: str, ylabel: str) -> None:
        ax.set_xticks(x, names)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if sat_x is not None:
            ax.axvline(sat_x, color="red", linestyle=":", label="saturation")
        ax.legend(fontsize=8)

    ax = axes[0][0]
    ax.plot(x, [lv["throughput_rps"] for lv in levels], "o-", label="throughput")
    ax.plot(x, [lv["goodput_rps"] for lv in levels], "s--", label="goodput (within SLO)")
    finish(ax, "Requests per second", "req/s")
    ax = axes[0][1]
    ax.plot(x, [lv["output_tps"] for lv in levels], "o-", label="output tokens/s")
    finish(ax, "Output throughput", "tok/s")
    for ax, name, title in (
        (axes[1][0], "ttft_ms", "Time to first token"),
        (axes[1][1], "e2e_ms", "End-to-end latency"),
    ):
        for stat, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            ax.plot(x, [lv[name][stat] for lv in levels], style, label=stat)
        bound = (a.get("slo") or {}).get(name)
        if bound:
            ax.axhline(bound, color="gray", linestyle="-.", label=f"SLO {bound:g} ms")
        finish(ax, title + " (client clock)", "ms")


def png_base64(run: Run) -> str:
    fig = figure(run)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child, td.l { text-align: left; }
table.kv td { text-align: left; white-space: normal; }
.note { color: #555; font-size: 13px; margin: 0.2em 0; }
.status-interrupted { color: #b35c00; font-weight: bold; } .status-complete { color: #2a7d2a; }
img { max-width: 100%; border: 1px solid #eee; }
details { margin-top: 1em; } summary { cursor: pointer; font-weight: 600; }
.scroll { overflow-x: auto; } .raw { max-height: 480px; }
"""


_NUMERIC = re.compile(r"^[-+~]?[\d,.]+( ?(%|ms|s|[KMG]iB|B))?( ?[(±/].*)?$")


def _html_table(t: TableData) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{'' if _NUMERIC.match(v) else ' class=l'}>{html.escape(v)}</td>" for v in row) + "</tr>"
        for row in t.rows
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in t.notes)
    return f"<h2>{html.escape(t.title)}</h2><div class=scroll><table><tr>{head}</tr>{body}</table></div>{notes}"


def html_report(run: Run) -> str:
    """One self-contained HTML page: header, tables, the plots (base64 PNG), machine, raw samples."""
    meta = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>" for k, v in machine_rows(run))
    main = "".join(_html_table(t) for t in tables(run))
    columns = [
        "seq",
        "model",
        "prompt",
        "level",
        "rep",
        "status",
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "prompt_tokens",
        "cached_tokens",
        "output_tokens",
        "decode_tps",
        "prefill_tps",
        "error",
    ]
    raw_rows = "".join(
        "<tr>" + "".join(f"<td class=l>{html.escape(_cell(getattr(s, c)))}</td>" for c in columns) + "</tr>"
        for s in run.samples
    )
    raw = (
        f"<details><summary>Raw samples ({len(run.samples)} requests; every value is also in the JSON and CSV "
        f"outputs)</summary><div class='scroll raw'><table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>"
        f"{raw_rows}</table></div></details>"
    )
    title = f"lmgauge {run.kind} {run.id}: {', '.join(run.model_names)}"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="status-{run.status}">status: {run.status}, {len(run.samples)} requests</p>'
        f"{main}<h2>Plots</h2><img alt='plots' src='data:image/png;base64,{png_base64(run)}'>"
        f"<h2>Machine and environment</h2><table class=kv>{meta}</table>{raw}"
        f"<p class=note>Generated by lmgauge at {time.strftime('%Y-%m-%d %H:%M:%S')}.</p></body></html>"
    )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
