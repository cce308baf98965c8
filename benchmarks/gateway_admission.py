"""Hostile requests against a running gateway, measured (docs/security.md, issue 21):

  - time to refuse a 100k-message chat request (client clock, send -> status), n repeats, next to
    a one-message request refused for another reason in the same run (the floor: HTTP + JSON);
  - a victim's stream while those arrive: its inter-token gaps (p50, max) vs the same stream alone;
  - the gateway process's RSS (psutil) before and after 300 requests naming 300 distinct
    would-be upstream URLs (`openai:m@http://127.0.0.1:N/v1`): it should stay flat.

The gateway runs as users run it (`lmgauge serve`, its own process, from this tree's src/), in
front of the stand-in Ollama server (tests/support/standins.py) streaming at a fixed token pace. Run it
under `flock /tmp/lmgauge-cpu.lock` on a shared machine.

    PYTHONPATH=src python benchmarks/gateway_admission.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, serve_gateway, start_standin, stop  # noqa: E402

USER = [{"role": "user", "content": "Why is the sky blue?"}]
TOKEN_DELAY = 0.02
TOKENS = 150


def start_gateway(port: int, stub_port: int, home: Path, src: Path) -> subprocess.Popen:
    return serve_gateway(
        port,
        home,
        f"""
[gateway]
log_requests = true
[[gateway.upstreams]]
model = "stub"
urls = ["http://127.0.0.1:{stub_port}"]
""",
        src=src,
    )


def stream_gaps(url: str, out: list[float]) -> None:
    """One streamed answer; the gaps between its lines in ms."""
    last = None
    with httpx.stream("POST", url + "/api/chat", json={"model": "stub", "messages": USER}, timeout=120) as r:
        for _ in r.iter_lines():
            now = time.perf_counter()
            if last is not None:
                out.append((now - last) * 1000)
            last = now


def timed_post(client: httpx.Client, body: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = client.post("/api/chat", content=body, headers={"Content-Type": "application/json"})
    return r.status_code, (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="the src/ folder whose gateway to run (e.g. another checkout's, for a before/after)",
    )
    parser.add_argument("--rss-only", action="store_true", help="only the 300-URL RSS measurement")
    args = parser.parse_args()
    print(f"gateway from {args.src}")
    home = Path(tempfile.mkdtemp(prefix="lmgauge-admission-"))
    stub_port, gw_port = free_port(), free_port()
    stub = start_standin(stub_port, "--token-delay", str(TOKEN_DELAY), "--num-tokens", str(TOKENS), "--model", "stub")
    gateway = start_gateway(gw_port, stub_port, home, args.src)
    url = f"http://127.0.0.1:{gw_port}"
    try:
        huge = json.dumps(
            {"model": "stub", "messages": [{"role": "user", "content": "hi"}] * 100_000, "stream": False}
        ).encode()
        floor = json.dumps({"model": "stub", "messages": USER, "stream": False, "options": []}).encode()
        with httpx.Client(base_url=url, timeout=300) as client:
            if not args.rss_only:
                admission(url, client, huge, floor, args.repeats)
            rss(gateway.pid, client)
    finally:
        stop(gateway)
        stop(stub)


def admission(url: str, client: httpx.Client, huge: bytes, floor: bytes, repeats: int) -> None:
    """The refusal time and the victim stream's gaps."""
    alone: list[float] = []
    stream_gaps(url, alone)
    during: list[float] = []
    victim = threading.Thread(target=stream_gaps, args=(url, during))
    victim.start()
    time.sleep(0.3)
    refusals, floors, statuses = [], [], set()
    for _ in range(repeats):
        status, ms = timed_post(client, huge)
        statuses.add(status)
        refusals.append(ms)
        status, ms = timed_post(client, floor)
        floors.append(ms)
    victim.join(120)
    print(
        f"100k-message request ({len(huge) / 2**20:.1f} MiB): status {sorted(statuses)}, refused in "
        f"p50 {statistics.median(refusals):.1f} ms (min {min(refusals):.1f}, max {max(refusals):.1f}, "
        f"n={len(refusals)}); a small request refused for a bad option: p50 {statistics.median(floors):.2f} ms"
    )
    print(
        f"victim stream gaps: alone p50 {statistics.median(alone):.1f} ms max {max(alone):.1f} ms; while the "
        f"100k-message requests arrived p50 {statistics.median(during):.1f} ms max {max(during):.1f} ms "
        f"(stand-in pace {TOKEN_DELAY * 1000:.0f} ms/token, {len(during)} gaps)"
    )


def rss(pid: int, client: httpx.Client) -> None:
    """The gateway's RSS around 300 distinct would-be upstream URLs."""
    proc = psutil.Process(pid)
    for i in range(20):  # warm up the refusal path
        client.post("/v1/chat/completions", json={"model": f"openai:w{i}@http://127.0.0.1:9/v1", "messages": USER})
    before = proc.memory_info().rss
    codes = set()
    for i in range(300):
        r = client.post(
            "/v1/chat/completions", json={"model": f"openai:m{i}@http://127.0.0.1:{1024 + i}/v1", "messages": USER}
        )
        codes.add(r.status_code)
    after = proc.memory_info().rss
    print(
        f"gateway RSS before 300 distinct would-be upstream URLs {before / 2**20:.1f} MiB, after "
        f"{after / 2**20:.1f} MiB (delta {(after - before) / 2**20:+.1f} MiB); statuses {sorted(codes)}"
    )


if __name__ == "__main__":
    main()
