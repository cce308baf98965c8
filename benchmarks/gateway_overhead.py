"""What the gateway adds on top of the upstream it fronts, measured against a fast local stub.

One run prints, side by side:
  - concurrency 1, non-streaming: latency calling the stub directly vs through the gateway
    (p50, p99) and the difference (the gateway's added latency);
  - concurrency 1, streaming: time to first line (TTFT) direct vs through the gateway;
  - concurrency 4 and 16: requests/s and p50 latency direct vs through the gateway;
  - the gateway process's CPU time per request;
  - the same for LiteLLM's proxy in front of the same stub, when it is installed
    (in its own virtualenv, default /work/venv-litellm; --litellm PATH to its `litellm` binary).
Targets (issue 6): added p50 <= 1 ms and p99 <= 3 ms at c=1; >= 1,000 requests/s at c=16.

Every server and the load generator run in their own processes (the load generator is this
script with --loadgen), so the client's CPU is not the gateway's. The gateway runs as users run
it (`lmgauge serve`, request log on). Wrap the run in `flock /tmp/lmgauge-cpu.lock` on a shared
machine; figures taken while other work runs are noisy and say so only by their spread.

    PYTHONPATH=src python benchmarks/gateway_overhead.py [--requests 2000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, serve_gateway, start_stub, stop, use_repo, wait_port  # noqa: E402

use_repo()

CHAT = {
    "model": "stub",
    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    "stream": False,
    "options": {"num_predict": 8},
}
LITELLM_KEY = "sk-lmgauge-benchmark-0123456789abcdef"  # LiteLLM's proxy refuses to start without one
OPENAI = {"model": "stub", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "max_tokens": 8}


# --- the load generator (its own process) ---------------------------------------------------------


async def _load(spec: dict) -> dict:
    import aiohttp

    concurrency = spec["concurrency"]
    stream = spec.get("stream", False)
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    targets = [(spec["url"], json.dumps(spec["body"]).encode(), [])]
    if spec.get("pair"):  # paired: every iteration calls both, in alternating order
        targets.append((spec["pair"]["url"], json.dumps(spec["pair"]["body"]).encode(), []))
    errors = 0
    stop_at = None
    count = spec.get("requests")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(url: str, body: bytes, latencies: list[float]) -> None:
            nonlocal errors
            t0 = time.perf_counter_ns()
            async with session.post(url, data=body, headers=headers) as r:
                if stream:
                    await r.content.readline()  # first line: TTFT as a client sees it
                    t1 = time.perf_counter_ns()
                    await r.read()
                else:
                    await r.read()
                    t1 = time.perf_counter_ns()
                if r.status != 200:
                    errors += 1
            latencies.append((t1 - t0) / 1e6)

        flip = 0

        async def one() -> None:
            nonlocal flip
            flip ^= 1
            for url, body, latencies in targets if flip else targets[::-1]:
                await call(url, body, latencies)

        for _ in range(spec.get("warmup", 50)):
            await one()
        for _, _, latencies in targets:
            latencies.clear()
        started = time.perf_counter()
        if spec.get("seconds"):
            stop_at = started + spec["seconds"]
        done = 0

        async def worker() -> None:
            nonlocal done
            while True:
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                if count is not None and done >= count:
                    return
                done += 1
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    out = {"latencies": targets[0][2], "elapsed": elapsed, "errors": errors}
    if len(targets) > 1:
        out["pair_latencies"] = targets[1][2]
    return out


def run_load(spec: dict, cpu_pid: int | None = None) -> dict:
    """Run the load generator in a child process; measure `cpu_pid`'s CPU time over the run."""
    import psutil

    proc = psutil.Process(cpu_pid) if cpu_pid else None
    cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", json.dumps(spec)], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout)
    if proc:
        result["cpu_s"] = sum(proc.cpu_times()[:2]) - cpu0
    return result


def summary(result: dict) -> dict:
    from lmgauge.bench.metrics import summarize

    s = summarize(result["latencies"])
    n = len(result["latencies"])
    return {
        "n": n,
        "p50": s.p50,
        "p99": s.p99,
        "rps": n / result["elapsed"],
        "errors": result["errors"],
        "cpu_ms_per_req": 1000 * result["cpu_s"] / n if result.get("cpu_s") is not None and n else None,
    }


# --- servers ----------------------------------------------------------------------------------------


def start_gateway(port: int, stub_port: int, home: Path) -> subprocess.Popen:
    """The gateway in front of the stub, as an Ollama upstream (stub) and an OpenAI one (ostub)."""
    return serve_gateway(
        port,
        home,
        f"""
[gateway]
max_queue = 10000
[[gateway.upstreams]]
model = "stub"
urls = ["http://127.0.0.1:{stub_port}"]
max_concurrency = 64
[[gateway.upstreams]]
model = "ostub"
kind = "openai"
target = "stub"
urls = ["http://127.0.0.1:{stub_port}/v1"]
max_concurrency = 64
""",
    )


def start_litellm(binary: str, port: int, stub_port: int, home: Path) -> subprocess.Popen | None:
    config = home / "litellm.yaml"
    config.write_text(f"""model_list:
  - model_name: stub
    litellm_params:
      model: openai/stub
      api_base: http://127.0.0.1:{stub_port}/v1
      api_key: unused
litellm_settings:
  telemetry: false
  drop_params: true
""")
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": LITELLM_KEY}
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc, timeout=180)
    except RuntimeError as exc:
        print(f"LiteLLM proxy did not start: {exc}")
        proc.kill()
        return None
    return proc


# --- the comparison -----------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "ms") -> str:
    return "-" if v is None else f"{v:8.3f} {unit}"


def compare(
    label: str, direct: dict, via: dict, target_p50: float | None = None, target_p99: float | None = None
) -> dict:
    added_p50, added_p99 = via["p50"] - direct["p50"], via["p99"] - direct["p99"]
    line = (
        f"{label:<34} direct p50 {fmt(direct['p50'])} p99 {fmt(direct['p99'])} | via p50 {fmt(via['p50'])} "
        f"p99 {fmt(via['p99'])} | added p50 {fmt(added_p50)} p99 {fmt(added_p99)}"
    )
    if target_p50 is not None:
        line += f" | target p50 <= {target_p50} ms: {'met' if added_p50 <= target_p50 else 'NOT met'}"
        line += f", p99 <= {target_p99} ms: {'met' if added_p99 <= target_p99 else 'NOT met'}"
    print(line, flush=True)
    return {"added_p50_ms": added_p50, "added_p99_ms": added_p99, "direct": direct, "via": via}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per concurrency-1 measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput measurement")
    parser.add_argument("--litellm", default=shutil.which("litellm") or "/work/venv-litellm/bin/litellm")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asyncio.run(_load(json.loads(args.loadgen)))))
        return

    import platform

    import psutil

    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count(logical=False)} cores / "
        f"{psutil.cpu_count()} threads, load average {os.getloadavg()[0]:.2f} at start"
    )
    home = Path(tempfile.mkdtemp(prefix="lmgauge-gw-bench-"))
    stub_port, gw_port = free_port(), free_port()
    stub = start_stub(stub_port)
    gateway = start_gateway(gw_port, stub_port, home)
    figures: dict = {}
    try:
        stub_url, gw_url = f"http://127.0.0.1:{stub_port}", f"http://127.0.0.1:{gw_port}"
        n = args.requests
        print(
            f"\n== concurrency 1, {n} requests each (after 200 warm-up), paired: each iteration calls the stub "
            "directly and through the gateway, alternating which goes first, so both see the same machine"
        )

        def paired(label: str, path: str, body: dict, gw_body: dict, stream: bool = False) -> dict:
            result = run_load(
                {
                    "url": stub_url + path,
                    "body": body,
                    "pair": {"url": gw_url + path, "body": gw_body},
                    "concurrency": 1,
                    "requests": n,
                    "warmup": 200,
                    "stream": stream,
                },
                gateway.pid,
            )
            d = summary({**result, "cpu_s": None})
            g = summary(
                {
                    "latencies": result["pair_latencies"],
                    "elapsed": result["elapsed"],
                    "errors": 0,
                    "cpu_s": result["cpu_s"],
                }
            )
            fig = compare(label, d, g, 1.0, 3.0)
            print(f"{'':<34} gateway CPU per request: {g['cpu_ms_per_req']:.3f} ms; errors {result['errors']}")
            return fig

        figures["c1_ollama"] = paired("non-streaming /api/chat", "/api/chat", CHAT, CHAT)
        stream_body = {**CHAT, "stream": True}
        figures["c1_ollama_stream_ttft"] = paired(
            "streaming /api/chat, TTFT", "/api/chat", stream_body, stream_body, stream=True
        )
        figures["c1_openai"] = paired(
            "non-streaming /v1/chat/completions", "/v1/chat/completions", OPENAI, {**OPENAI, "model": "ostub"}
        )
        direct_openai_c1 = figures["c1_openai"]["direct"]

        print(f"\n== throughput, {args.seconds:g} s per level, Ollama /api/chat non-streaming")
        for c in (4, 16):
            d = summary(
                run_load({"url": stub_url + "/api/chat", "body": CHAT, "concurrency": c, "seconds": args.seconds})
            )
            g = summary(
                run_load(
                    {"url": gw_url + "/api/chat", "body": CHAT, "concurrency": c, "seconds": args.seconds}, gateway.pid
                )
            )
            target = f" | target >= 1000 req/s: {'met' if g['rps'] >= 1000 else 'NOT met'}" if c == 16 else ""
            print(
                f"c={c:<3} direct {d['rps']:8.0f} req/s p50 {fmt(d['p50'])} | via gateway {g['rps']:8.0f} req/s "
                f"p50 {fmt(g['p50'])} | added p50 {fmt(g['p50'] - d['p50'])} | gateway CPU/req "
                f"{g['cpu_ms_per_req']:.3f} ms | errors {g['errors']}{target}",
                flush=True,
            )
            figures[f"c{c}"] = {"direct": d, "via": g}

        litellm_bin = args.litellm if args.litellm and Path(args.litellm).exists() else None
        if litellm_bin:
            port = free_port()
            print(f"\n== LiteLLM proxy ({litellm_bin}) vs lmgauge, same stub, OpenAI /v1/chat/completions")
            proxy = start_litellm(litellm_bin, port, stub_port, home)
            if proxy is not None:
                try:
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    hdr = {"Authorization": f"Bearer {LITELLM_KEY}"}
                    l1 = summary(
                        run_load(
                            {
                                "url": url,
                                "body": OPENAI,
                                "concurrency": 1,
                                "requests": min(n, 500),
                                "warmup": 50,
                                "headers": hdr,
                            },
                            proxy.pid,
                        )
                    )
                    lite = compare("LiteLLM c=1", direct_openai_c1, l1)
                    l16 = summary(
                        run_load(
                            {"url": url, "body": OPENAI, "concurrency": 16, "seconds": args.seconds, "headers": hdr},
                            proxy.pid,
                        )
                    )
                    g16 = summary(
                        run_load(
                            {
                                "url": gw_url + "/v1/chat/completions",
                                "body": {**OPENAI, "model": "ostub"},
                                "concurrency": 16,
                                "seconds": args.seconds,
                            },
                            gateway.pid,
                        )
                    )
                    ours = figures["c1_openai"]["added_p50_ms"]
                    print(
                        f"added p50 at c=1: LiteLLM {lite['added_p50_ms']:.3f} ms vs lmgauge {ours:.3f} ms "
                        f"-> lmgauge adds {lite['added_p50_ms'] / max(ours, 1e-3):.1f}x less (target >= 10x)"
                    )
                    print(
                        f"req/s at c=16: LiteLLM {l16['rps']:.0f} (errors {l16['errors']}, CPU/req "
                        f"{l16['cpu_ms_per_req']:.2f} ms) vs lmgauge {g16['rps']:.0f} (errors {g16['errors']}, CPU/req "
                        f"{g16['cpu_ms_per_req']:.3f} ms) -> {g16['rps'] / max(l16['rps'], 1e-9):.1f}x (target >= 10x)"
                    )
                    figures["litellm"] = {"c1": l1, "c16": l16, "lmgauge_c16_openai": g16}
                finally:
                    stop(proxy)
        else:
            print("\nLiteLLM not installed (pip install 'litellm[proxy]' into its own venv): comparison skipped")
    finally:
        stop(gateway)
        stop(stub)
    if args.json:
        for fig in figures.values():
            for part in fig.values() if isinstance(fig, dict) else []:
                if isinstance(part, dict):
                    part.pop("latencies", None)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
