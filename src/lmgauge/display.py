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
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
        lines = ([f"# {plain_cell(rows.title)}"] if rows.title else []) + (
            ["\t".join(rows.columns)] if rows.header else []) + [
            "\t".join(plain_cell(c) for c in row) for row in rows.rows]
        console.file.write("".join(line + "\n" for line in lines))
        console.file.flush()
        return
    if rows.title:
        console.print(escape(rows.title), style="bold", highlight=False)
    if natural_width(rows) <= console.width:
        table = Table(box=None, show_header=rows.header, pad_edge=False, padding=(0, GAP // 2))
        for name in rows.columns:
            table.add_column(name, no_wrap=True, overflow="ignore",
                             justify="right" if name in rows.right else "left")
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
        for name, cell in zip(rows.columns, row):
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


def table_of(columns: Sequence[str], data: Iterable[Sequence[object]], title: str | None = None,
             right: Iterable[str] = ()) -> Rows:
    rows = Rows(list(columns), title=title, right=frozenset(right))
    for row in data:
        rows.add(*row)
    return rows
