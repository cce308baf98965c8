"""How the CLI prints tables, so that nothing a user reads is split, cut or dropped.

- stdout is not a terminal (a pipe, a file): plain, complete rows, tab-separated, a header row
  first (and a `# title` line before it when the table has a title): `lmgauge log | cut -f4`,
  `grep`, `sort` work, and every column and every character of every cell is there (tabs and
  newlines inside a cell become spaces).
- a terminal wide enough for the table: an aligned table, cells never cut or wrapped.
- a terminal too narrow for it: one record per row, one `column: value` line per field, the
  value wrapped at spaces (a word longer than the line stays whole), so a narrow window still
  shows every column without splitting `smollm2` into `smollm`/`2`.

`--json` (each command's flag) stays the machine-readable form with types; this is for text.

The units every command prints (durations, byte sizes, parameter counts), the `--verbose` stats
block (shared by `run` and `lmgauge demo`) and `show`'s rows live here too, defined once.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .types import Timings

GAP = 2  # spaces between columns of an aligned table


@dataclass
class Rows:
    """A table's content, independent of how it is shown."""

    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    right: frozenset[str] = frozenset()  # columns aligned right (numbers)
    header: bool = True  # False for key/value listings (`show`)

    def add(self, *cells: object) -> None:
        self.rows.append(["" if c is None else str(c) for c in cells])


def plain_cell(text: str) -> str:
    return " ".join(text.replace("\t", " ").splitlines())


def natural_width(rows: Rows) -> int:
    widths = [len(c) for c in rows.columns] if rows.header else [0] * len(rows.columns)
    for row in rows.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(plain_cell(cell)))
    return sum(widths) + GAP * (len(widths) - 1)


def print_rows(console: Console, rows: Rows) -> None:
    """Print a table the way this output can take it (see the module docstring)."""
    if not console.is_terminal:
        lines = (
            ([f"# {plain_cell(rows.title)}"] if rows.title else [])
            + (["\t".join(rows.columns)] if rows.header else [])
            + ["\t".join(plain_cell(c) for c in row) for row in rows.rows]
        )
        console.file.write("".join(line + "\n" for line in lines))
        console.file.flush()
        return
    if rows.title:
        console.print(escape(rows.title), style="bold", highlight=False)
    if natural_width(rows) <= console.width:
        table = Table(box=None, show_header=rows.header, pad_edge=False, padding=(0, GAP // 2))
        for name in rows.columns:
            table.add_column(name, no_wrap=True, overflow="ignore", justify="right" if name in rows.right else "left")
        for row in rows.rows:
            table.add_row(*[escape(plain_cell(c)) for c in row])
        console.print(table, crop=False)
        return
    print_records(console, rows)


def print_records(console: Console, rows: Rows) -> None:
    """One block per row, `column: value`, values wrapped at spaces only."""
    label_width = max((len(c) for c in rows.columns), default=0) + 2
    width = max(console.width - label_width, 20)
    for n, row in enumerate(rows.rows):
        if n and rows.header:
            console.print()
        for name, cell in zip(rows.columns, row, strict=False):
            pieces = textwrap.wrap(plain_cell(cell), width, break_long_words=False, break_on_hyphens=False) or [""]
            label = f"{name}:" if rows.header else name
            console.print(escape(f"{label:<{label_width}}{pieces[0]}"), highlight=False, crop=False)
            for piece in pieces[1:]:
                console.print(escape(" " * label_width + piece), highlight=False, crop=False)


def key_values(pairs: Iterable[tuple[str, object]], title: str | None = None) -> Rows:
    """A two-column listing (`show`, `route explain`)."""
    rows = Rows(["key", "value"], title=title, header=False)
    for key, value in pairs:
        rows.add(key, value)
    return rows


def table_of(
    columns: Sequence[str], data: Iterable[Sequence[object]], title: str | None = None, right: Iterable[str] = ()
) -> Rows:
    rows = Rows(list(columns), title=title, right=frozenset(right))
    for row in data:
        rows.add(*row)
    return rows


# --- units and the stats block (shared by commands and `lmgauge demo`) --------------------------


def human_ms(value: float | None) -> str:
    """A duration given in milliseconds: 12.3ms, 4.56s, '-' when unknown."""
    if value is None:
        return "-"
    return f"{value / 1000:.2f}s" if value >= 1000 else f"{value:.1f}ms"


def human_size(n: float | None) -> str:
    """Bytes in binary units: 512 B, 1.5 MiB."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def human_count(n: int) -> str:
    """135M, 1.5B: how model sizes are said."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{0 if n / scale >= 100 else 1}f}{unit}".replace(".0" + unit, unit)
    return str(n)


def stats_rows(t: Timings) -> list[tuple[str, str]]:
    """The `--verbose` block: Ollama's fields plus TTFT and TPOT, both clocks labelled."""
    cached = f" ({t.cached_tokens} from cache)" if t.cached_tokens else ""
    rate = lambda v: "-" if v is None else f"{v:.2f} tokens/s"  # noqa: E731  a short factory, read where it is used
    return [
        ("total duration", human_ms(t.total_ns / 1e6 if t.total_ns else None)),
        ("load duration", human_ms(t.load_ns / 1e6)),
        ("prompt eval count", f"{t.prompt_tokens} token(s){cached}"),
        ("prompt eval duration", human_ms(t.prompt_eval_ns / 1e6 if t.prompt_eval_ns is not None else None)),
        ("prompt eval rate", rate(t.prefill_tps)),
        ("eval count", f"{t.output_tokens} token(s)"),
        ("eval duration", human_ms(t.eval_ns / 1e6 if t.eval_ns is not None else None)),
        ("eval rate", rate(t.decode_tps)),
        ("time to first token", human_ms(t.ttft_ms) + "  (client clock)"),
        ("time per output token", human_ms(t.tpot_ms) + "  (client clock)"),
        ("end to end", human_ms(t.e2e_ms) + "  (client clock)"),
        *speculation_rows(t.speculation),
    ]


def speculation_rows(spec: Any) -> list[tuple[str, str]]:
    """What speculative decoding did (`run --verbose`), and whether it paid for this answer."""
    if spec is None:
        return []
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731  a short factory, read where it is used
    mean = "-" if spec.mean_accepted is None else f"{spec.mean_accepted:.2f}"
    rows = [
        (
            "speculation",
            (
                f"{spec.mode}: {spec.accepted}/{spec.drafted} drafted tokens accepted "
                f"({pct(spec.acceptance_rate)}), {mean} per step over {spec.steps} step(s)"
            ),
        ),
        (
            "draft vs verify",
            f"{human_ms(spec.draft_ns / 1e6)} drafting, {human_ms(spec.verify_ns / 1e6)} verifying"
            + (f", {spec.grammar_cut} draft token(s) cut by the grammar" if spec.grammar_cut else ""),
        ),
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
        return (
            f"speculation was slower than plain decoding here and paused {spec.pauses} time(s) (busy cores, "
            f"or batching already fills them): run without {what}, or with fewer parallel streams"
        )
    if gain is not None and gain < 1.0:
        return (
            f"speculation slowed this answer (~{gain:.2f}x): run without {what}, or with fewer "
            "parallel streams (batching already fills the cores)"
        )
    return None


def show_rows(info: Any) -> list[tuple[str, str]]:
    """`show` as a person reads it: one name row, sizes and counts in units, unset values left out."""
    rows = [("name", info.name), ("source", info.source)] + ([("path", info.path)] if info.path else [])
    for key, value in info.details.items():
        if key in ("template", "modelfile", "license") or value is None:
            continue
        if key == "name":  # the name written inside the GGUF, not a second "name" row
            key = "gguf name"
        if key.endswith("size") and isinstance(value, int):
            value = human_size(value)
        elif key in ("parameters", "parameter_count") and isinstance(value, int):
            value = human_count(value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        rows.append((key.replace("_", " "), str(value)))
    return rows
