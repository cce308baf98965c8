"""The `lmgauge` command: parses arguments, calls the library, prints. Nothing else lives here.

    commands.py   the Typer app: every command registered explicitly, in `--help` order; `main`
    console.py    the two consoles: results on stdout, notes and progress on stderr
    options.py    flags several commands share, and parsers (-o key=value, 512,2k lists, --format)
    records.py    what answering commands keep: the request-log row, the answer as JSON
    render.py     how each command's results look (tables, blocks, the progress bar);
                  units, the stats block and the table printer are lmgauge.display's
    run.py        run (one answer, the tool loop, the interactive REPL)
    models.py     models, ps, show, size, demo, rm
    context.py    chat (managed context, memory, documents), eval context
    memory.py     memory list | search | edit | forget
    gateway.py    serve, log, monitor
    bench.py      bench, load, runs, report, compare
    route.py      route explain | ask | calibrate, eval routing
    cache.py      cache stats | clear, eval cache
    batch.py      batch
    quality.py    quality

Every error a user can cause is a LmgaugeError: `main` prints it on one line to stderr, exit code 1.
"""

from ..display import stats_rows
from .commands import app, main
from .options import parse_counts, parse_format, parse_options

__all__ = ["app", "main", "parse_counts", "parse_format", "parse_options", "stats_rows"]
