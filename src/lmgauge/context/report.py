"""Rendering the context evaluation: rich tables for the terminal, a PNG of prompt tokens per turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


SHORT = {
    "keep-everything": "keep all",
    "keep-everything (same window)": "keep all, same window",
    "truncation": "truncation",
    "summarize": "summarize",
    "hybrid": "hybrid memory",
    "hybrid (oracle memories)": "hybrid, oracle memories",
    "hybrid (without change notes)": "hybrid, no change notes",
    "hybrid (oracle memories without change notes)": "oracle, no change notes",
}


def print_report(report: dict[str, Any], console: Console) -> None:
    console.rule(f"[bold]Context evaluation: {report['model']}")
    console.print(
        f"seed {report['seed']}, {report['conversations']} conversation(s) of {report['turns']} turns, "
        f"managed window {report['num_ctx']} tokens, keep-all window {report['full_ctx']}"
    )
    needles = Table(
        "strategy",
        "window",
        "in prompt",
        "answer ok",
        "stale",
        "n",
        box=None,
        title="Needles: is the current value in the prompt? in the answer?",
        title_justify="left",
    )
    tokens = Table(
        "strategy",
        "first",
        "max",
        "limit",
        "mean 2nd half",
        "alert",
        "refused",
        "compactions",
        "s each",
        box=None,
        title="Prompt tokens per turn",
        title_justify="left",
    )
    for s in report["strategies"]:
        name = SHORT.get(s["name"], s["name"])
        needles.add_row(
            name,
            str(s["num_ctx"]),
            _pct(s["in_prompt"]),
            _pct(s["correct"]) if s["answered"] else "not asked",
            _pct(s["stale"]) if s["answered"] else "-",
            str(s["questions"]),
        )
        alerts = (
            ", ".join(f"t{t} {f:.0%}" for t, f in zip(s["alert_turn"], s["alert_fraction"], strict=True) if t) or "-"
        )
        refused = ", ".join(f"t{r}" for r in s["refused_at"] if r) or "-"
        run = next(r for r in report["runs"] if r["name"] == s["name"])
        tokens.add_row(
            name,
            str(run["tokens_first"]),
            str(s["tokens_max"]),
            str(s["limit"]),
            f"{s['tokens_mean_second_half']:.0f}",
            alerts,
            refused,
            str(s["compactions"]),
            f"{s['compaction_ms_mean'] / 1000:.1f}" if s["compaction_ms_mean"] else "-",
        )
    console.print(needles)
    console.print(tokens)
    memory = [
        s
        for s in report["strategies"]
        if s["supersession_accuracy"] is not None or s["extraction_precision"] is not None
    ]
    if memory:
        table = Table(
            "strategy",
            *MEMORY_COLUMNS,
            box=None,
            title_justify="left",
            title="Memory: extraction, supersession, stale values, added latency per turn",
        )
        for s in memory:
            table.add_row(SHORT.get(s["name"], s["name"]), *memory_cells(s))
        console.print(table)
    if "retrieval" in report:
        r = report["retrieval"]
        keys = [k for k in r["rows"][0] if k != "method"] if r["rows"] else []
        table = Table(
            "method",
            *[k.replace("budget ", "in ") for k in keys],
            box=None,
            title_justify="left",
            title=f"Documents: evidence recall ({r['questions']} questions, {r['documents']} files, "
            f"{r.get('chunks', '?')} chunks; 'in N': within an N-token budget)",
        )
        for row in r["rows"]:
            table.add_row(row["method"], *[_pct(row.get(k)) for k in keys])
        console.print(table)
    console.print(f"[dim]{report['seconds']:.0f}s[/]")


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")


# The memory table's columns after the row labels; memory_cells() gives a row's cells in this order.
MEMORY_COLUMNS = (
    "extraction P / R",
    "misfiled",
    "supersession",
    "stale as current",
    "answer ok",
    "stale answers",
    "other's value",
    "added p50 / p95",
    "answer p50",
    "p95 share",
    "waits",
    "background p50 / p95",
)


def memory_cells(s: dict[str, Any]) -> list[str]:
    """One strategy's memory figures as table cells (see evaluation._aggregate)."""
    pr = (
        "-"
        if s["extraction_precision"] is None and s["extraction_recall"] is None
        else f"{_pct(s['extraction_precision'])} / {_pct(s['extraction_recall'])}"
    )
    changes = s.get("changes") or {}
    n = sum(v["n"] for k, v in changes.items() if k != "distractor")
    ok = sum(v["correct"] for k, v in changes.items() if k != "distractor")
    sup = f"{_pct(s['supersession_accuracy'])} ({ok}/{n})" if n else "-"
    return [
        pr,
        "-" if s.get("misfiled") is None else str(s["misfiled"]),
        sup,
        _pct(s.get("stale_current")),
        _pct(s["correct"]) if s["answered"] else "not asked",
        _pct(s["stale"]) if s["answered"] else "-",
        _pct(s.get("distracted")) if s["answered"] else "-",
        f"{_ms(s.get('added_ms_p50'))} / {_ms(s.get('added_ms_p95'))}",
        _ms(s.get("answer_ms_p50")),
        _pct(s.get("added_p95_share")),
        str(s.get("waits", 0)),
        f"{_ms(s.get('background_ms_p50'))} / {_ms(s.get('background_ms_p95'))}",
    ]


def print_models(reports: list[dict[str, Any]], console: Console) -> None:
    """The memory figures of several models side by side (one run of `eval context`)."""
    table = Table(
        "model",
        "strategy",
        *MEMORY_COLUMNS,
        box=None,
        title_justify="left",
        title="Memory, per model (same run)",
    )
    for report in reports:
        for s in report["strategies"]:
            if s["supersession_accuracy"] is None and s["extraction_precision"] is None:
                continue
            table.add_row(Path(report["model"]).name, SHORT.get(s["name"], s["name"]), *memory_cells(s))
    console.print(table)


def plot_tokens(report: dict[str, Any], path: Path) -> Path:
    """Prompt tokens per turn, one line per strategy (first conversation), with the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for run in report["runs"]:
        if run["conversation"] != 0:
            continue
        ax.plot(range(1, len(run["tokens"]) + 1), run["tokens"], label=f"{run['name']} (window {run['num_ctx']})")
    limits = sorted({run["limit"] for run in report["runs"]})
    for limit in limits:
        ax.axhline(limit, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("turn")
    ax.set_ylabel("prompt tokens")
    ax.set_title(f"Prompt tokens per turn: {report['model']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
