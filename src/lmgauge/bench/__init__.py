"""Benchmarks that can be trusted: `lmgauge bench`, context sweeps, load tests, reports, comparisons.

    from lmgauge import Client
    from lmgauge.bench import BenchConfig, RunStore, load_prompts, run_bench, summarize_run
    from lmgauge.store import Store

    with Client() as client:
        run = run_bench(client, BenchConfig(models=["smollm2"], prompts=load_prompts("short")),
                        RunStore(Store(client.settings.db_path)))
    print(summarize_run(run))

Modules, one job each:
  metrics.py   pure statistics: summaries, percentiles, TPOT, ITL pooling, goodput, cost-curve
               fit, saturation point, Mann-Whitney / bootstrap comparison
  prompts.py   built-in prompt sets, prompt files, generated prose of an exact token length
  machine.py   the machine, the engine's version, the engine process whose memory is measured
  results.py   Sample and Run, summaries, and their tables in the SQLite store
  runner.py    bench runs and context sweeps
  load.py      the load generator (closed and open loop)
  report.py    tables, CSV / JSON / JSON Lines, PNG plots, the HTML report
  compare.py   run against run, per metric
See docs/bench.md.
"""

from .compare import compare_runs
from .load import LoadConfig, run_load
from .prompts import BenchPrompt, load_prompts
from .report import write_outputs
from .results import Run, RunStore, Sample, summarize_run
from .runner import BenchConfig, SweepConfig, run_bench, run_sweep

__all__ = [
    "BenchConfig",
    "BenchPrompt",
    "LoadConfig",
    "Run",
    "RunStore",
    "Sample",
    "SweepConfig",
    "compare_runs",
    "load_prompts",
    "run_bench",
    "run_load",
    "run_sweep",
    "summarize_run",
    "write_outputs",
]
