"""Load tests (`lmgauge load`, scripted) against three targets, in one run:

  embedded      smollm2 in this process, `parallel` = the highest concurrency (continuous batching)
  llama-server  llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) on
                the same GGUF, started here as a subprocess on 127.0.0.1: a real local server
                (it serves one request at a time, so concurrency only queues; started with
                --interrupt_requests False, else each new request cuts off the one running)
  stand-in      tests/support/standins.py's OpenAI server with a fixed per-token delay: a server that scales
                perfectly, which checks the load generator itself (throughput should grow with
                concurrency, TPOT stay at the delay)

For each: per concurrency level, request throughput, output tok/s, goodput under the SLO, error
rate, TTFT/TPOT/ITL/E2E percentiles, and the saturation point; the engine process's RSS (the
server's own process, found by its port). Closed loop by default; --rate for open loop.

    python benchmarks/load_test.py [--concurrency 1,2,4] [--requests 8] [--num-predict 64]
                                   [--targets embedded,llama-server,stand-in] [--out reports/load]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, use_repo  # noqa: E402

use_repo()

from lmgauge import Client  # noqa: E402
from lmgauge.bench.load import LoadConfig, parse_levels, parse_slo, run_load  # noqa: E402
from lmgauge.bench.prompts import load_prompts  # noqa: E402
from lmgauge.bench.report import fmt_bytes, render, write_outputs  # noqa: E402
from lmgauge.bench.results import RunStore  # noqa: E402
from lmgauge.models import smollm2_path  # noqa: E402
from lmgauge.store import Store  # noqa: E402


def start_llama_server(path: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            path,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--model_alias",
            "smollm2",
            # By default this server cuts off the stream it is serving when a new request arrives (an
            # empty answer for the first); a load test wants the requests queued instead.
            "--interrupt_requests",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("llama_cpp.server exited; is `pip install sse-starlette starlette-context` done?")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama_cpp.server did not come up within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--rate", default=None, help="open loop instead, e.g. 0.5,1,2")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--num-predict", type=int, default=64)
    ap.add_argument("--slo", default="ttft=500ms,tpot=50ms")
    ap.add_argument("--targets", default="embedded,llama-server,stand-in")
    ap.add_argument("--out", type=Path, default=Path("reports/load"))
    args = ap.parse_args()

    console = Console(width=140)
    levels = parse_levels(args.concurrency, int)
    rates = parse_levels(args.rate, float) if args.rate else None
    targets = [t.strip() for t in args.targets.split(",")]
    console.print(f"load average at start: {os.getloadavg()[0]:.2f}")
    summary = []
    for target in targets:
        server = None
        overrides: dict = {"keep_alive": -1}
        if target == "embedded":
            name = "smollm2"
            overrides["parallel"] = max(levels)
        elif target == "llama-server":
            port = free_port()
            server = start_llama_server(str(smollm2_path()), port)
            name = f"openai:smollm2@http://127.0.0.1:{port}/v1"
        elif target == "stand-in":
            from support.standins import OpenAIStandin

            server = OpenAIStandin(reply="word " * args.num_predict, token_delay=0.01).start()
            name = f"openai:standin-model@{server.base_url}"
        else:
            raise SystemExit(f"unknown target {target!r}")
        try:
            with Client(**overrides) as client:
                config = LoadConfig(
                    model=name,
                    prompts=load_prompts("short"),
                    concurrency=None if rates else levels,
                    rates=rates,
                    requests=args.requests,
                    num_predict=args.num_predict,
                    slo=parse_slo(args.slo),
                )
                console.rule(f"{target}: {name}")
                run = run_load(
                    client, config, RunStore(Store(client.settings.db_path)), progress=lambda what, done, total: None
                )
        finally:
            if isinstance(server, subprocess.Popen):
                server.terminate()
                server.wait(timeout=30)
            elif server is not None:
                server.stop()
        console.print(render(run))
        memory = run.models[name].get("memory", {})
        console.print(f"engine process: {memory.get('process')}: RSS {fmt_bytes(memory.get('rss_bytes'))}")
        for path in write_outputs(
            run, [args.out / f"load-{target}-{run.id}.html", args.out / f"load-{target}-{run.id}.json"]
        ):
            console.print(f"wrote {path}", style="dim")
        sat = run.analysis.get("saturation")
        summary.append((target, run.analysis.get("peak", {}), sat["level"] if sat else "not reached"))
    console.rule("summary")
    for target, peak, sat in summary:
        console.print(
            f"{target:14} peak {peak.get('throughput_rps', 0):.2f} req/s, "
            f"{peak.get('output_tps', 0):.1f} output tok/s at {peak.get('level')}; saturation: {sat}"
        )
    console.print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
