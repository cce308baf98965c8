"""How each command's results look on screen: the tables, blocks and notes the commands print,
built from what the library returned. Shared units and the table printer live in lmgauge.display;
the progress bar every long command shows is here too.

Tables go to stdout (`out`), notes and per-turn reports to stderr (`err`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..display import (
    Rows,
    human_ms,
    human_size,
    key_values,
    print_rows,
    stats_rows,
    table_of,
)
from ..types import Timings
from .console import err, out


def progress_bar(elapsed: bool = False, transient: bool = True, disable: bool = False) -> Progress:
    """The bar long commands show on stderr: what is running, done/total, and elapsed or remaining time."""
    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        clock,
        console=err,
        transient=transient,
        disable=disable,
    )


def print_listing(data: list[Any], json_out: bool, empty: str, rows: Callable[[list[Any]], Rows]) -> None:
    """What a listing command (`ps`, `log`, `runs`) prints: JSON, a note on stderr when there is
    nothing to list, or the table."""
    if json_out:
        out.print_json(data=data)
        return
    if not data:
        err.print(empty)
        return
    print_rows(out, rows(data))


def print_stats(t: Timings) -> None:
    """`run --verbose`: the stats block on stderr, so stdout keeps only the answer."""
    for label, value in stats_rows(t):
        err.print(f"{label + ':':<24}{value}")


def print_attempts(attempts: Sequence[Any], auto: bool) -> None:
    """Which tiers answered a routed request, on stderr (`run auto`, `route ask`)."""
    for a in attempts:
        note = f" ({a.reason})" if a.reason else ""
        if auto:
            err.print(f"[dim]auto -> {a.tier}: {a.model} ({a.status}){note}[/]", markup=True)
        else:
            err.print(f"[dim]{a.tier}: {a.model} -> {a.status}{note}[/]", markup=True)


# --- models ---------------------------------------------------------------------------------------


def models_table(found: Sequence[Any]) -> Rows:
    return table_of(
        ("name", "size", "source", "path"),
        [(m.name, human_size(m.size_bytes), m.source, m.path or "") for m in found],
        right=("size",),
    )


def ps_table(loaded: Sequence[dict]) -> Rows:
    def until(m: dict) -> str:
        expires = m.get("expires_at") or ""
        return "Forever" if not expires or expires.startswith("2318") else expires.replace("T", " ")[:19]

    return table_of(
        ("NAME", "SIZE", "CONTEXT", "UNTIL"),
        [(m.get("name"), human_size(m.get("size")), m.get("context_length", "-"), until(m)) for m in loaded],
    )


def size_table(contexts: Sequence[int], estimates: Sequence[Any], title: str) -> Rows:
    columns = ("num_ctx", "weights", "KV cache", "compute", "other", "total")
    rows = []
    for c, e in zip(contexts, estimates, strict=True):
        other = e.total_bytes - e.weights_bytes - e.kv_bytes - e.compute_bytes  # logits + runtime
        rows.append(
            (
                c,
                human_size(e.weights_bytes),
                human_size(e.kv_bytes),
                human_size(e.compute_bytes),
                human_size(other),
                human_size(e.total_bytes),
            )
        )
    return table_of(columns, rows, title=title, right=columns)


# --- context and memory ---------------------------------------------------------------------------


def turn_report(turn: Any, verbose: bool) -> None:
    """What the context manager did this turn: always the alert and warnings, details with -v."""
    p = turn.prepared
    if p.alert:
        err.print(
            f"[yellow]context alert:[/] the conversation reached {p.before.fraction:.0%} of the prompt budget "
            f"({p.before.used}/{p.before.limit} tokens)",
            markup=True,
        )
    if p.compaction and not verbose:
        err.print(f"[dim](compacted: {escape(str(p.compaction))})[/]", markup=True)
    for w in turn.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", markup=True)
    if not verbose:
        return
    for line in _turn_details(turn):
        err.print(f"[dim]{escape(line)}[/]", markup=True)


def _turn_details(turn: Any) -> list[str]:
    p = turn.prepared
    b = p.budget
    lines = [
        (
            f"turn {p.turn}: {b.used}/{b.limit} tokens ({b.fraction:.0%}) of a {b.window}-token window, "
            f"{b.reserve} reserved for the answer{'' if b.exact else ' (upper bound: no local tokenizer)'}"
        )
    ]
    if p.compaction:
        lines.append(f"  compacted ({p.compaction.reason}): {p.compaction}")
    if p.memory_ms:
        lines.append(
            f"  memory and compaction before the answer: {human_ms(p.memory_ms)}"
            + (f", of which waiting for background work {human_ms(p.waited_ms)}" if p.waited_ms else "")
        )
    if p.recalled:
        lines.append(
            "  recalled: "
            + "; ".join(r.text if r.source == "memory" else f"(turn {r.turn}) {r.text}" for r in p.recalled)
        )
    if p.retrieved:
        lines.append("  documents: " + "; ".join(f"{c.path}:{c.start_line}-{c.end_line}" for c in p.retrieved))
    if turn.extraction is not None and turn.extraction.stored:
        lines.append(
            "  remembered: " + "; ".join(f"{r.action} {r.item.kind} {r.item.text}" for r in turn.extraction.stored)
        )
    if turn.result is not None:
        t = turn.result.timings
        lines.append(
            f"  {t.prompt_tokens} prompt tokens ({t.cached_tokens} from cache), {t.output_tokens} out, "
            f"TTFT {human_ms(t.ttft_ms)}"
        )
    return lines


def memory_table(items: Sequence[Any], scores: Sequence[float] | None = None) -> Table:
    table = Table("id", "kind", "key", "value", "status", "mentions", "confidence", "turn", "updated", box=None)
    if scores is not None:
        table.add_column("score")
    for i, m in enumerate(items):
        row = [
            str(m.id),
            m.kind,
            m.key if m.subject == "user" else f"{m.subject}'s {m.key}",
            m.value,
            m.status + (f" -> {m.superseded_by}" if m.superseded_by else ""),
            str(m.mentions),
            f"{m.confidence:.2f}",
            "-" if m.source_turn is None else str(m.source_turn),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(m.updated)),
        ]
        if scores is not None:
            row.append(f"{scores[i]:.3f}")
        table.add_row(*row)
    return table


# --- the request log and benchmark runs -----------------------------------------------------------


def log_table(rows: Sequence[dict]) -> Rows:
    numbers = ("prompt", "out", "TTFT", "E2E", "tok/s")
    data = []
    for r in rows:
        flags = (" cache" if r["cache_hit"] else "") + (" compacted" if r["compacted"] else "")
        data.append(
            (
                time.strftime("%m-%d %H:%M:%S", time.localtime(r["ts"])),
                r["source"],
                r["model"],
                r["status"] + flags,
                str(r["prompt_tokens"] or "-"),
                str(r["output_tokens"] or "-"),
                human_ms(r["ttft_ms"]),
                human_ms(r["e2e_ms"]),
                "-" if not r["decode_tps"] else f"{r['decode_tps']:.1f}",
                r["upstream"] or "",
                r["error"] or "",
            )
        )
    return table_of(("time", "source", "model", "status", *numbers, "upstream", "error"), data, right=numbers)


def runs_table(rows: Sequence[dict]) -> Rows:
    return table_of(
        ("id", "kind", "status", "started", "models", "requests"),
        [
            (
                r["id"],
                r["kind"],
                r["status"],
                time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"])),
                r["models"],
                r["samples"],
            )
            for r in rows
        ],
        right=("requests",),
    )


def compare_table(a: Any, b: Any, rows: Sequence[Any], alpha: float) -> Rows:
    from ..bench.report import fmt_ms, fmt_num, fmt_pct

    data = []
    for r in rows:
        c = r.comparison
        fmt = fmt_num if r.metric.endswith("tps") else fmt_ms
        ci = f"[{fmt_pct(c.ci_low)}, {fmt_pct(c.ci_high)}]" if c.ci_low is not None else "-"
        data.append(
            (
                r.group,
                r.metric,
                fmt(c.median_a),
                fmt(c.median_b),
                f"{c.delta:+.1%}" if c.delta is not None else "-",
                ci,
                "-" if c.p_value is None else f"{c.p_value:.3f}",
                f"{c.n_a}/{c.n_b}",
                r.verdict,
            )
        )
    return table_of(
        ("group", "metric", "A p50", "B p50", "delta", f"{1 - alpha:.0%} CI", "p", "n A/B", "verdict"),
        data,
        title=f"B = {b.id} vs A = {a.id} (Mann-Whitney U and bootstrap CI, alpha {alpha:g})",
    )


def compare_notes(a: Any, b: Any, rows: Sequence[Any], alpha: float, only_a: list[str], only_b: list[str]) -> None:
    """Under the comparison table, on stderr: how to read the verdict, too few samples, unmatched groups."""
    from ..bench.compare import min_samples

    err.print(
        "verdict: better/worse = the test and the interval agree on a change; ~ = neither finds one; "
        "unclear = they disagree (measure more)"
    )
    if any(r.comparison.too_few for r in rows):
        err.print(
            f"[yellow]too few:[/] with these request counts the test cannot reach p < {alpha:g} whatever the "
            f"data; compare runs with at least {min_samples(alpha)} successful requests per group each "
            "(e.g. --reps 5)",
            markup=True,
        )
    for run, groups in ((a, only_a), (b, only_b)):
        if groups:
            err.print(f"not compared (only run {run.id} measured them): {', '.join(groups)}")


# --- routing --------------------------------------------------------------------------------------


def decision_rows(decision: Any) -> Rows:
    return key_values(
        [
            ("tier", f"{decision.tier} ({decision.model})"),
            ("confidence", f"{decision.confidence:.2f}"),
            ("reason", decision.reason),
            ("probabilities", ", ".join(f"{k} {v:.2f}" for k, v in decision.probabilities.items())),
            ("overhead", f"{decision.overhead_ms:.2f} ms"),
        ]
    )


def print_calibration(report: Any) -> None:
    """`route calibrate`: accuracy per tier and family, the quality-vs-cost curve, the operating point."""
    from ..routing.calibration import summarize_curve

    names = list(report.tiers)
    table = Table(
        "tier",
        "model",
        "correct",
        "mean E2E",
        "cheapest correct for",
        box=None,
        title=f"{report.tasks} checkable prompts per tier",
    )
    for n in names:
        table.add_row(
            n,
            report.tiers[n],
            f"{report.accuracy[n]:.0%}",
            human_ms(report.mean_e2e_ms[n]),
            f"{report.label_share[n]:.0%}",
        )
    out.print(table)
    fam = Table("tier", *next(iter(report.accuracy_by_family.values())).keys(), box=None, title="correct by family")
    for n in names:
        fam.add_row(n, *[f"{v:.0%}" for v in report.accuracy_by_family[n].values()])
    out.print(fam)
    curve = Table(
        "calls to largest",
        "kept of largest's correct",
        "APGR",
        "accuracy",
        "time vs largest",
        box=None,
        title="quality vs cost (out-of-fold router scores)",
    )
    for p in summarize_curve(report.curve):
        curve.add_row(
            f"{p.share_largest:.0%}", f"{p.kept:.0%}", f"{p.apgr:.2f}", f"{p.accuracy:.0%}", f"{p.time_share:.0%}"
        )
    out.print(curve)
    _print_operating_point(report)
    out.print(f"router accuracy on the cheapest-correct-tier labels (out of fold): {report.router_accuracy_oof:.0%}")


def _print_operating_point(report: Any) -> None:
    p = report.point
    if p is None:
        out.print(f"No point keeps {report.keep:.0%} of the largest tier's correct answers.")
        return
    calls = ", ".join(f"{k} {v:.0%}" for k, v in p.calls.items())
    rnd = (
        f"; random routing at that share keeps {report.random_kept_at_point:.0%}"
        if report.random_kept_at_point is not None
        else ""
    )
    out.print(
        f"[bold]Keeps {p.kept:.0%} of the largest tier's correct answers with {p.share_largest:.0%} of "
        f"calls to it[/] (calls: {calls}; {p.time_share:.0%} of its time){rnd}."
    )


def print_routing_eval(
    reports: Sequence[Any],
    shares: dict[str, float],
    threshold: float,
    times: Any,
    saved: Any,
    time_sample: int,
    num_predict: int,
    n_tiers: int,
) -> None:
    """`eval routing`: each classifier's scores and confusion matrix, tier shares, time saved."""
    for r in reports:
        who = f" ({r.model})" if r.model else ""
        o = r.overhead_ms
        out.print(
            f"[bold]{r.classifier} classifier{who}[/]: accuracy {r.accuracy:.1%}, macro-F1 {r.macro_f1:.3f} "
            f"on {r.n} test queries; overhead p50 {o['p50']:.2f} ms, p95 {o['p95']:.2f} ms"
        )
        cm = Table("true \\ predicted", *r.labels, box=None)
        for label, row in zip(r.labels, r.confusion, strict=True):
            cm.add_row(label, *[str(v) for v in row])
        out.print(cm)
    out.print(
        "share of test queries per tier (features classifier, threshold "
        f"{threshold:.2f}): " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
    )
    if times:
        levels = ("simple", "moderate", "complex")
        tt = Table(
            "tier",
            "model",
            *[f"mean E2E {lvl}" for lvl in levels],
            box=None,
            title=f"measured on {time_sample} test queries per level, num_predict {num_predict}",
        )
        for t in times:
            tt.add_row(t.tier, t.model, *[human_ms(t.mean_e2e_ms.get(lvl)) for lvl in levels])
        out.print(tt)
        out.print(
            f"estimated time for the test split: routed {human_ms(saved['routed_ms'])} vs always-largest "
            f"{human_ms(saved['always_largest_ms'])}: [bold]{saved['saved_share']:.0%} saved[/]"
        )
    elif n_tiers < 2:
        err.print("(one tier configured: no time to save; give tiers with --tier NAME=MODEL)")


# --- cache and quality ----------------------------------------------------------------------------


def print_cache_eval(data: dict[str, Any]) -> None:
    """`eval cache`: hit and false-hit rates overall and per split, the threshold sweep, lookup latency."""
    overall, latency = data["overall"], data["exact_hit_ms"]
    out.print(
        f"[bold]{data['pairs']} labeled pairs, threshold {data['threshold']:.2f}, {data['backend']}[/]: "
        f"paraphrase hit rate {overall['paraphrase_hit_rate']:.1%} ({overall['paraphrases']}), false-hit rate "
        f"{overall['false_hit_rate']:.1%} on near misses ({overall['near_misses']}; by kind "
        f"{overall['false_hits_by_kind']})"
    )
    for s, r in data["by_split"].items():
        out.print(f"  {s}: hit {r['paraphrase_hit_rate']:.1%}, false hit {r['false_hit_rate']:.1%}")
    sw = Table("threshold", "paraphrase hits", "false hits", box=None, title="threshold sweep (same guards)")
    for row in data["sweep"]:
        sw.add_row(f"{row['threshold']:.2f}", f"{row['paraphrase_hit_rate']:.1%}", f"{row['false_hit_rate']:.1%}")
    out.print(sw)
    out.print(f"exact-hit lookup: p50 {latency['p50']:.3f} ms, p95 {latency['p95']:.3f} ms (n={latency['n']})")


def print_quality(report: Any) -> None:
    """`quality`: the measurements table and the verdict per memory budget, each with its notes."""
    from ..quality.report import table, verdict_table

    for t in (table(report), verdict_table(report)):
        grid = Table(title=t.title, title_justify="left")
        for column in t.columns:
            grid.add_column(column, overflow="fold")
        for row in t.rows:
            grid.add_row(*row)
        out.print(grid)
        for note in t.notes:
            out.print(f"  {note}")
