"""Rendering the context evaluation: rich tables for the terminal, a PNG of prompt tokens per turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


SHORT = {"keep-everything": "keep all", "keep-everything (same window)": "keep all, same window",
         "truncation": "truncation", "summarize": "summarize", "hybrid": "hybrid memory",
         "hybrid (oracle memories)": "hybrid, oracle memories"}


def print_report(report: dict[str, Any], console: Console) -> None:
    console.rule(f"[bold]Context evaluation: {report['model']}")
    console.print(f"seed {report['seed']}, {report['conversations']} conversation(s) of {report['turns']} turns, "
                  f"managed window {report['num_ctx']} tokens, keep-all window {report['full_ctx']}")
    needles = Table("strategy", "window", "in prompt", "answer ok", "stale", "n", box=None,
                    title="Needles: is the current value in the prompt? in the answer?", title_justify="left")
    tokens = Table("strategy", "first", "max", "limit", "mean 2nd half", "alert", "refused", "compactions", "s each",
                   box=None, title="Prompt tokens per turn", title_justify="left")
    for s in report["strategies"]:
        name = SHORT.get(s["name"], s["name"])
        needles.add_row(name, str(s["num_ctx"]), _pct(s["in_prompt"]),
                        _pct(s["correct"]) if s["answered"] else "not asked",
                        _pct(s["stale"]) if s["answered"] else "-", str(s["questions"]))
        alerts = ", ".join(f"t{t} {f:.0%}" for t, f in zip(s["alert_turn"], s["alert_fraction"]) if t) or "-"
        refused = ", ".join(f"t{r}" for r in s["refused_at"] if r) or "-"
        run = next(r for r in report["runs"] if r["name"] == s["name"])
        tokens.add_row(name, str(run["tokens_first"]), str(s["tokens_max"]), str(s["limit"]),
                       f"{s['tokens_mean_second_half']:.0f}", alerts, refused, str(s["compactions"]),
                       f"{s['compaction_ms_mean'] / 1000:.1f}" if s["compaction_ms_mean"] else "-")
    console.print(needles)
    console.print(tokens)
    for s in report["strategies"]:
        if s["extraction_precision"] is not None or s["supersession_accuracy"] is not None:
            extraction = ("" if s["extraction_precision"] is None and s["extraction_recall"] is None else
                          f"extraction precision {_pct(s['extraction_precision'])}, recall "
                          f"{_pct(s['extraction_recall'])}; ")
            console.print(f"{SHORT.get(s['name'], s['name'])}: {extraction}supersession accuracy "
                          f"{_pct(s['supersession_accuracy'])}; stale values recalled as current memories: "
                          f"{s['stale_recalled']}")
    if "retrieval" in report:
        r = report["retrieval"]
        keys = [k for k in r["rows"][0] if k != "method"] if r["rows"] else []
        table = Table("method", *[k.replace("budget ", "in ") for k in keys], box=None, title_justify="left",
                      title=f"Documents: evidence recall ({r['questions']} questions, {r['documents']} files, "
                            f"{r.get('chunks', '?')} chunks; 'in N': within an N-token budget)")
        for row in r["rows"]:
            table.add_row(row["method"], *[_pct(row.get(k)) for k in keys])
        console.print(table)
    console.print(f"[dim]{report['seconds']:.0f}s[/]")


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
