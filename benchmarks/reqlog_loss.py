"""What a kill -9 of the gateway can lose from its request log, at a given request rate.

Rows are queued in memory and committed in batches (gateway/reqlog.py); a kill loses the rows
not yet committed. The window is how old a row can be when its commit lands, which the gateway
measures itself for every batch (`request_log.max_age_ms` / `age_p99_ms` in
/api/lmgauge/stats). This drives `lmgauge serve` (its own process) in front of the stub
upstream (its own process) at a steady rate for a while and prints that window next to the
target (`linger_s`, 50 ms), with the achieved request rate.

    PYTHONPATH=src flock /tmp/lmgauge-cpu.lock python benchmarks/reqlog_loss.py [--rate 500] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import free_port, start_stub, stop  # noqa: E402
from gateway_overhead import CHAT, start_gateway  # noqa: E402


async def drive(url: str, rate: float, seconds: float, concurrency: int) -> dict:
    """Requests at `rate` per second overall (each worker paced), non-streaming /api/chat."""
    import aiohttp

    done = errors = 0
    interval = concurrency / rate
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker(k: int) -> None:
            nonlocal done, errors
            next_at = time.perf_counter() + k * interval / concurrency
            while next_at < end:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                try:
                    async with session.post(url + "/api/chat", json=CHAT) as r:
                        await r.read()
                        done += r.status == 200
                        errors += r.status != 200
                except aiohttp.ClientError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the last batch lands
        async with session.get(url + "/api/lmgauge/stats") as r:
            log = (await r.json())["request_log"]
    return {"requests_per_s": round(done / elapsed, 1), "errors": errors, **log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[500.0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    for rate in args.rate:
        home = Path(tempfile.mkdtemp(prefix="lmgauge-reqlog-"))
        stub_port, port = free_port(), free_port()
        stub = start_stub(stub_port)
        gateway = start_gateway(port, stub_port, home)
        try:
            figures = asyncio.run(drive(f"http://127.0.0.1:{port}", rate, args.seconds, args.concurrency))
        finally:
            stop(gateway)
            stop(stub)
            shutil.rmtree(home, ignore_errors=True)
        print(json.dumps({"target_rate": rate, **figures}))


if __name__ == "__main__":
    main()
