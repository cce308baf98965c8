"""A quality run's outputs: the table, the verdicts, the plot, the HTML page and the JSON file.

The table is built once as plain data (`table`) and rendered on screen (cli) and in HTML, so
both agree. The plot puts every row at (file size, mean KLD to the reference) with its decode
speed as the marker's area, beside perplexity with its error bars.

Verdicts (`verdicts`): for each memory budget, the rows whose *predicted* memory (sizing.estimate,
weights + KV cache + buffers) at the verdict window fits; among them the lowest mean KLD wins, and
its decode speed is compared with the fastest row that fits. The measured RSS is taken at the run's
(small) window; the budget window is usually larger, so the prediction is what can decide there.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from ..bench.report import TableData, fmt_bytes, fmt_num
from ..errors import InvalidOptionError, LmgaugeError
from ..models import inspect_gguf
from ..sizing import estimate, format_size
from .results import Row

BUDGET_STEPS = tuple(1 << n for n in range(27, 38))  # 128 MiB .. 128 GiB


# --- verdicts ------------------------------------------------------------------------------------


def _predicted(row: Row, ctx: int) -> int | None:
    try:
        return estimate(inspect_gguf(row.path), ctx, kv_type=row.kv_type).total_bytes
    except LmgaugeError:
        return None


def verdicts(rows: list[Row], budgets: list[int] | None, ctx: int) -> list[dict[str, Any]]:
    """One verdict per budget (see the module docstring). Default budgets: the powers of two from
    just under the smallest prediction to just over the largest."""
    predicted = {r.label: _predicted(r, ctx) for r in rows}
    sizes = [p for p in predicted.values() if p]
    if budgets is None:
        if not sizes:
            return []
        budgets = [b for b in BUDGET_STEPS if min(sizes) / 2 < b <= max(sizes) * 2]
    out = []
    for budget in budgets:
        fit = [r for r in rows if (p := predicted[r.label]) is not None and p <= budget]
        entry: dict[str, Any] = {"budget_bytes": budget, "ctx": ctx, "fits": [r.label for r in fit]}
        if not fit:
            smallest = min(rows, key=lambda r: predicted[r.label] or math.inf, default=None)
            need = predicted[smallest.label] if smallest else None
            entry["text"] = f"fits in {format_size(budget)} at {ctx} ctx: nothing measured fits" + (
                f" (the smallest, {smallest.label}, needs {format_size(need)})" if smallest and need else ""
            )
            out.append(entry)
            continue
        best = min(
            fit, key=lambda r: (r.kld_mean() if not math.isnan(r.kld_mean()) else math.inf, -(r.decode_tps or 0))
        )
        fastest = max(fit, key=lambda r: r.decode_tps or 0)
        entry.update(best=best.label, kld=best.kld_mean(), fastest=fastest.label, predicted_bytes=predicted[best.label])
        speed = ""
        if best.decode_tps and fastest.decode_tps and fastest.label != best.label:
            ratio = fastest.decode_tps / best.decode_tps
            entry["slowdown_vs_fastest"] = ratio
            speed = f", {ratio:.2f}x slower than {fastest.label}" if ratio >= 1.005 else f", as fast as {fastest.label}"
        elif best.decode_tps:
            speed = ", also the fastest that fits"
        entry["text"] = (
            f"fits in {format_size(budget)} at {ctx} ctx: best quality is {best.label}, "
            f"KLD {best.kld_mean():.4f}{speed}"
        )
        out.append(entry)
    return out


def parse_budgets(text: str) -> list[int]:
    from ..sizing import parse_size

    values = [parse_size(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise InvalidOptionError("--budgets: give sizes such as 512MiB,1GiB,2GiB")
    return sorted(set(values))


# --- the table -----------------------------------------------------------------------------------


def _est(q: dict[str, Any], name: str, digits: int = 4, scale: float = 1.0, suffix: str = "") -> str:
    e = q.get(name)
    if not e or e.get("value") is None or (isinstance(e["value"], float) and math.isnan(e["value"])):
        return "-"
    return f"{e['value'] * scale:.{digits}f} ± {e['uncertainty'] * scale:.{digits}f}{suffix}"


def table(report: dict[str, Any]) -> TableData:
    ref = report["reference"]
    t = TableData(
        f"Quality against {ref['quantization']} (reference), speed and memory",
        [
            "variant",
            "KV",
            "file",
            "bits/w",
            "PPL",
            "KLD mean",
            "KLD median",
            "KLD p99",
            "KLD max",
            "same top-1",
            "prefill tok/s",
            "decode tok/s",
            "RSS measured",
            "RSS predicted",
        ],
    )
    for r in (Row.from_dict(d) for d in report["rows"]):
        q = r.quality
        if r.is_reference and r.kv_type == "f16":
            cells = [_est(q, "ppl", 3), "0 (reference)", "0", "0", "0", "100%"]
        else:
            cells = [
                _est(q, "ppl", 3),
                _est(q, "kld_mean", 5),
                fmt_num(q.get("kld_median"), 5),
                fmt_num(q.get("kld_p99"), 4),
                fmt_num(q.get("kld_max"), 3),
                _est(q, "same_top", 2, 100, " %"),
            ]
        t.rows.append(
            [
                r.weights + (" (ref)" if r.is_reference else ""),
                r.kv_type,
                fmt_bytes(r.file_size),
                f"{r.bits_per_weight:.2f}",
                *cells,
                fmt_num(r.prefill_tps),
                fmt_num(r.decode_tps),
                fmt_bytes(r.rss_bytes) if r.rss_bytes is not None else "-",
                fmt_bytes(r.rss_estimate_bytes) if r.rss_estimate_bytes is not None else "-",
            ]
        )
    c = report["corpus"]
    cfg = report["config"]
    cost = report["reference_logits"]
    t.notes += [
        f"Reference: {ref['path']} - {ref['why']}.",
        f"Text: {c['label']}; {c['chunks']} chunks of {cfg['ctx']} tokens, the second half of each scored "
        f"({c['scored_tokens']} tokens), as llama-perplexity does. ± is one standard error.",
        "KLD = KL(reference || variant) per scored token, natural log, from the reference's top-"
        f"{cfg['top_k']} tokens + tail mass (a lower bound of the full-vocabulary KLD). same top-1 = the "
        "variant's most likely token is the reference's.",
        f"Speed: the bench code (built-in prompt '{'medium' if cfg['ctx'] >= 512 else 'short'}', "
        f"{cfg['num_predict']} tokens out; warmup {cfg['warmup']} excluded, {cfg['reps']} reps, "
        f"medians, engine clock). RSS measured = the engine process's RSS growth from loading to the last "
        f"request at num_ctx {cfg['ctx']}; predicted = sizing.estimate for the same window.",
        f"Reference distributions on disk: {fmt_bytes(cost['disk_bytes'])} for {cost['scored_tokens']} tokens "
        f"({fmt_num(cost.get('bytes_per_token'), 0)} B/token); llama-perplexity's --kl-divergence-base file "
        f"for the same tokens: {fmt_bytes(cost['llama_perplexity_bytes'])}.",
        *report.get("notes", []),
    ]
    return t


def verdict_table(report: dict[str, Any]) -> TableData:
    t = TableData(
        f"Verdicts: the best quality that fits each memory budget at {report['budget_ctx']} ctx (predicted memory)",
        ["budget", "verdict"],
    )
    for v in report["verdicts"]:
        t.rows.append([format_size(v["budget_bytes"]), v["text"]])
    return t


# --- the plot ------------------------------------------------------------------------------------


def figure(report: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [Row.from_dict(d) for d in report["rows"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    speeds = [r.decode_tps for r in rows if r.decode_tps]
    top_speed = max(speeds) if speeds else 1.0
    for r in rows:
        kld = r.kld_mean()
        if math.isnan(kld):
            continue
        size = 60 + 540 * ((r.decode_tps or 0) / top_speed)
        marker = "s" if r.kv_type != "f16" else ("*" if r.is_reference else "o")
        ax.scatter(r.file_size / 2**20, max(kld, 0.0), s=size, marker=marker, alpha=0.6)
        tag = f"{r.weights}" + (f" KV {r.kv_type}" if r.kv_type != "f16" else "")
        tag += f"\n{r.decode_tps:.0f} tok/s" if r.decode_tps else ""
        ax.annotate(tag, (r.file_size / 2**20, max(kld, 0.0)), fontsize=8, xytext=(6, 6), textcoords="offset points")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KLD to the reference (nats/token)")
    ax.set_title("Quality lost vs size (marker area = decode tok/s; squares: quantized KV cache)")
    ax.grid(alpha=0.3)
    labels = [r.weights + (f"\nKV {r.kv_type}" if r.kv_type != "f16" else "") for r in rows]
    ppl = [r.quality.get("ppl", {}).get("value") for r in rows]
    err = [r.quality.get("ppl", {}).get("uncertainty") or 0 for r in rows]
    xs = list(range(len(rows)))
    ax2.errorbar(xs, [p or 0 for p in ppl], yerr=err, fmt="o", capsize=4)
    ax2.set_xticks(xs, labels, fontsize=8)
    ax2.set_ylabel("perplexity (± 1 s.e.)")
    ax2.set_title("Perplexity on the text")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"lmgauge quality: {report['model']} (reference {report['reference']['quantization']})")
    fig.tight_layout()
    return fig


def png_bytes(report: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    fig = figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# --- files ---------------------------------------------------------------------------------------

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1250px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}th,td{border-bottom:1px solid #ddd;padding:4px 8px;
text-align:right;white-space:nowrap}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.l{text-align:left;white-space:normal}.note{color:#555;font-size:13px;margin:.2em 0}img{max-width:100%}"""


def _html_table(t: TableData, wrap_last: bool = False) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = ""
    for row in t.rows:
        cells = [
            f"<td{' class=l' if wrap_last and i == len(row) - 1 else ''}>{html.escape(v)}</td>"
            for i, v in enumerate(row)
        ]
        body += "<tr>" + "".join(cells) + "</tr>"
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in t.notes)
    return f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{notes}"


def html_report(report: dict[str, Any]) -> str:
    title = f"lmgauge quality: {report['model']}"
    png = base64.b64encode(png_bytes(report)).decode()
    machine = report.get("machine", {})
    meta = html.escape(
        f"{machine.get('cpu', '?')}, {machine.get('cores_physical', '?')} cores; "
        f"wall time {report['wall_seconds']:.0f} s"
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p class=note>{meta}</p>"
        f"{_html_table(table(report))}{_html_table(verdict_table(report), wrap_last=True)}"
        f"<h2>Plot</h2><img alt='KLD vs size' src='data:image/png;base64,{png}'>"
        f"<p class=note>Generated by lmgauge at {time.strftime('%Y-%m-%d %H:%M:%S')}.</p></body></html>"
    )


def write_outputs(report: dict[str, Any], target: Path) -> list[Path]:
    """A directory (or a path without suffix): quality-<id>.json/.png/.html in it; a file path:
    that one format by its suffix."""
    suffix = target.suffix.lower().lstrip(".")
    if suffix and suffix not in ("json", "png", "html"):
        raise InvalidOptionError(f"-O {target}: use a directory, or a .json, .png or .html file")
    if suffix:
        paths = {suffix: target}
    else:
        target.mkdir(parents=True, exist_ok=True)
        paths = {fmt: target / f"quality-{report['id']}.{fmt}" for fmt in ("json", "png", "html")}
    for fmt, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "json":
            path.write_text(json.dumps(report, indent=2, default=str))
        elif fmt == "png":
            path.write_bytes(png_bytes(report))
        else:
            path.write_text(html_report(report))
    return list(paths.values())
