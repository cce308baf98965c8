"""A bounded soak of the gateway: N minutes at concurrency C through `lmgauge serve` in front of
a stand-in upstream that streams like a model (8 tokens, a few ms apart), mixing Ollama and
OpenAI requests, streaming and not. Prints the gateway's RSS at the start (after a warm-up) and
at the end, its growth (target < 5%), the maximum, and the error count (target 0).

    PYTHONPATH=src flock /tmp/lmgauge-cpu.lock python benchmarks/gateway_soak.py [--minutes 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, start_stub, stop  # noqa: E402
from gateway_overhead import start_gateway  # noqa: E402

REQUESTS = [
    ("/api/chat", {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
    ("/api/chat", {"model": "stub", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ("/api/generate", {"model": "stub", "prompt": "hi", "stream": True}),
    (
        "/v1/chat/completions",
        {
            "model": "ostub",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("/v1/chat/completions", {"model": "ostub", "messages": [{"role": "user", "content": "hi"}]}),
]


async def _load(url: str, seconds: float, concurrency: int) -> dict:
    import aiohttp

    counts = {"ok": 0, "errors": 0}
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                path, body = REQUESTS[i % len(REQUESTS)]
                i += 1
                try:
                    async with session.post(url + path, json=body) as r:
                        text = await r.text()
                    bad = (
                        r.status != 200
                        or '"error"' in text
                        or (body.get("stream") and path.startswith("/v1/") and "[DONE]" not in text)
                    )
                except aiohttp.ClientError as exc:
                    bad, text = True, str(exc)
                if bad:
                    counts["errors"] += 1
                    errors.append(f"{path}: {text[:200]}")
                else:
                    counts["ok"] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {**counts, "first_errors": errors[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the starting RSS is taken")
    parser.add_argument("--token-delay", type=float, default=0.005)
    parser.add_argument("--loadgen", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        url, seconds, concurrency = args.loadgen
        print(json.dumps(asyncio.run(_load(url, float(seconds), int(concurrency)))))
        return

    import psutil

    home = Path(tempfile.mkdtemp(prefix="lmgauge-soak-"))
    stub_port, gw_port = free_port(), free_port()
    stub = start_stub(stub_port, "--token-delay", str(args.token_delay))
    gateway = start_gateway(gw_port, stub_port, home)
    proc = psutil.Process(gateway.pid)
    total = args.warmup + args.minutes * 60
    print(
        f"soak: {args.minutes:g} min at concurrency {args.concurrency} (+{args.warmup:g}s warm-up), "
        f"gateway pid {gateway.pid}, stub streaming 8 tokens {1000 * args.token_delay:g} ms apart",
        flush=True,
    )
    load = subprocess.Popen(
        [sys.executable, __file__, "--loadgen", f"http://127.0.0.1:{gw_port}", str(total), str(args.concurrency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(args.warmup)
        rss_start = proc.memory_info().rss
        samples = [rss_start]
        t0 = time.time()
        while load.poll() is None:
            time.sleep(10)
            rss = proc.memory_info().rss
            samples.append(rss)
            print(f"  {time.time() - t0:5.0f}s  RSS {rss / 2**20:7.1f} MiB", flush=True)
        result = json.loads(load.stdout.read())
        rss_end = proc.memory_info().rss
    finally:
        if load.poll() is None:
            load.kill()
        stop(gateway)
        stop(stub)
    growth = 100 * (rss_end - rss_start) / rss_start
    n = result["ok"] + result["errors"]
    print(f"\nrequests {n} ({n / total:.0f}/s), errors {result['errors']} (target 0)")
    print(
        f"RSS start {rss_start / 2**20:.1f} MiB, end {rss_end / 2**20:.1f} MiB, max {max(samples) / 2**20:.1f} MiB, "
        f"growth {growth:+.2f}% (target < 5%): {'met' if growth < 5 and result['errors'] == 0 else 'NOT met'}"
    )
    for e in result["first_errors"]:
        print("  error:", e)


if __name__ == "__main__":
    main()
