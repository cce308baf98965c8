"""What the benchmark scripts share: where things are, a free port, servers started as users
start them (`lmgauge serve` with a config file, the stub upstream, the stand-in Ollama server,
each its own process), stopping them, and a timing loop.

A benchmark imports it after putting its own folder on sys.path (scripts run as
`python benchmarks/NAME.py`, so that is already the case):

    from _common import free_port, serve_gateway, start_stub, stop

`use_repo()` puts the worktree's src/ (and tests/, for the stand-in servers) first on sys.path,
so a script measures this checkout and not an installed lmgauge. Statistics (percentiles,
summaries) are the library's: lmgauge.bench.metrics.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
TESTS = ROOT / "tests"


def use_repo() -> None:
    """This checkout's lmgauge (src/) and test support (tests/) before anything installed."""
    for path in (str(TESTS), str(SRC)):
        if path not in sys.path:
            sys.path.insert(0, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until something listens on 127.0.0.1:port; an error if `proc` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM (a graceful stop, as Ctrl-C would), SIGKILL if it is still there after 20 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def serve_gateway(port: int, home: Path, config: str, src: Path = SRC) -> subprocess.Popen:
    """`lmgauge serve` in its own process, as a user runs it: `config` (TOML) written to
    home/config.toml, LMGAUGE_HOME=home, OLLAMA_HOST unset; returns once it listens."""
    path = home / "config.toml"
    path.write_text(config)
    env = {**os.environ, "LMGAUGE_HOME": str(home), "PYTHONPATH": str(src)}
    env.pop("OLLAMA_HOST", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmgauge", "serve", "--port", str(port), "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_port(port, proc)
    return proc


def start_stub(port: int, *args: str) -> subprocess.Popen:
    """The cheapest upstream (stub_upstream.py) in its own process; `args` are its flags."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "stub_upstream.py"), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc


def start_standin(port: int, *args: str) -> subprocess.Popen:
    """The tests' stand-in Ollama server (tests/support/standins.py) in its own process."""
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "support" / "standins.py"), "ollama", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc)
    return proc


def timed_ms(fn: Callable[[int], object], n: int) -> list[float]:
    """`fn(0) ... fn(n-1)`, each timed alone: milliseconds per call (perf_counter_ns)."""
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def model_args(description: str, reps: int = 7, tokens: int = 128, ctx: int = 2048) -> argparse.ArgumentParser:
    """The flags every model-against-model benchmark takes: --model --reps --tokens --ctx --json."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--ctx", type=int, default=ctx)
    ap.add_argument("--json", action="store_true")
    return ap


@dataclass
class SideBySide:
    """One model loaded twice, in lmgauge (a Client) and in bare_llama.py's loop, same threads and window."""

    client: Any
    ref: Any
    bare: Any
    threads: int

    def close(self) -> None:
        self.bare.close()
        self.client.close()


def load_side_by_side(model: str, ctx: int, **client_options: Any) -> SideBySide:
    from bare_llama import BareLlama, on_llama_thread
    from lmgauge import Client
    from lmgauge.engines.llamacpp import default_threads

    threads = default_threads()
    client = Client(num_ctx=ctx, threads=threads, keep_alive=-1, **client_options)
    ref = client.resolve(model)
    bare = on_llama_thread(BareLlama, ref.target, n_ctx=ctx, threads=threads)
    return SideBySide(client, ref, bare, threads)
