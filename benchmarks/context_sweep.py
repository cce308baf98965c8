"""How does a model's cost grow with the filled context? (`lmgauge bench --ctx-sweep`, scripted)

Runs the context sweep on one model (default smollm2 up to 6k tokens, beyond the 4096 of the
issue's done-when) and prints, per filled-context size, the engine's prefill time, TTFT, prefill
and decode speed and the KV cache that context needs; then the fitted cost curve
t(n) = a + b n + c n^2 with its R^2, the share of the n^2 term at the largest size, the measured
scaling exponent, and the n^2 coefficient that FLOP counting predicts beside the measured one.
Writes the plot (PNG), the HTML report and the JSON next to each other.

    python benchmarks/context_sweep.py [--model smollm2] [--points 256,512,1k,2k,4k,6k]
                                       [--reps 3] [--num-predict 32] [--out reports/sweep]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from lmgauge import Client
from lmgauge.bench.report import render, write_outputs
from lmgauge.bench.results import RunStore
from lmgauge.bench.runner import SweepConfig, parse_token_counts, run_sweep
from lmgauge.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--points", default="256,512,1k,2k,4k,6k")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num-predict", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("reports/sweep"))
    args = ap.parse_args()

    console = Console(width=130)
    with Client(keep_alive=-1) as client:
        runs = RunStore(Store(client.settings.db_path))
        config = SweepConfig(
            model=args.model, points=parse_token_counts(args.points), reps=args.reps, num_predict=args.num_predict
        )
        console.print(f"load average at start: {os.getloadavg()[0]:.2f}")
        run = run_sweep(
            client,
            config,
            runs,
            progress=lambda what, done, total: console.print(f"  [{done}/{total}] {what}", style="dim"),
        )
    console.print(render(run))
    for path in write_outputs(
        run, [args.out / f"sweep-{run.id}.png", args.out / f"sweep-{run.id}.html", args.out / f"sweep-{run.id}.json"]
    ):
        console.print(f"wrote {path}")
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
