"""What a benchmark ran on: the machine, the engine and its version, and the engine process
whose memory is measured.

Memory is the *engine process's* resident set (RSS), never the benchmark client's:
  - the embedded engine runs in this process, so it is this process (Python included; the
    RSS before the model was loaded is recorded beside it, so the model's share is visible);
  - a server on this machine (Ollama, llama-server, vLLM, a stand-in) is found by the port it
    listens on, and its process tree is measured (Ollama runs each model in a child process);
  - a server elsewhere: unknown, and reported as unknown.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import psutil

from ..models import ModelRef


def describe_machine() -> dict[str, Any]:
    """CPU, cores, RAM, GPU, OS and library versions; load average shows a busy machine."""
    mem = psutil.virtual_memory()
    freq = psutil.cpu_freq()
    return {
        "cpu": cpu_model(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(),
        "cpu_max_mhz": round(freq.max) if freq and freq.max else None,
        "ram_bytes": mem.total,
        "ram_available_bytes": mem.available,
        "gpus": gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": {name: _version(name) for name in ("lmgauge", "llama-cpp-python", "numpy")},
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """GPUs visible to NVIDIA's or AMD's tools; empty on a CPU-only machine."""
    found: list[str] = []
    for tool, args in (
        ("nvidia-smi", ["--query-gpu=name,memory.total", "--format=csv,noheader"]),
        ("rocm-smi", ["--showproductname"]),
    ):
        if shutil.which(tool):
            try:
                out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            found += [line.strip() for line in out.splitlines() if line.strip() and "====" not in line]
    return found


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def llama_system_info() -> str:
    import llama_cpp.llama_cpp as L

    return L.llama_print_system_info().decode(errors="replace").strip(" |")


# --- the engine process -------------------------------------------------------------------------


@dataclass
class EngineProcess:
    """The process whose memory counts for a model; pid None means unknown."""

    pid: int | None
    label: str  # how it was found, shown beside the figure

    def rss(self) -> int | None:
        """Resident set of the process and its children (bytes), or None if unknown/gone."""
        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return None

    def peak_rss(self) -> int | None:
        """High-water mark of the main process's RSS (Linux VmHWM, else getrusage for this one)."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        if self.pid == os.getpid():
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return None


def engine_process(ref: ModelRef) -> EngineProcess:
    if ref.engine == "llamacpp":
        return EngineProcess(os.getpid(), "this process (embedded engine)")
    if not ref.url:
        return EngineProcess(None, "unknown (no server URL)")
    parts = urlsplit(ref.url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if not is_local_host(host):
        return EngineProcess(None, f"unknown (server {host} is not on this machine)")
    pid = listening_pid(port)
    if pid is None:
        return EngineProcess(None, f"unknown (no visible process listens on port {port})")
    try:
        name = psutil.Process(pid).name()
    except psutil.Error:
        name = "?"
    where = "this process" if pid == os.getpid() else f"pid {pid}"
    return EngineProcess(pid, f"{where} ({name}, listening on port {port}), with its children")


def is_local_host(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", ""):
        return True
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    if address.startswith("127."):
        return True
    own = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    return address in own


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (needs the right to see it: same user or root)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    return None


def engine_version(ref: ModelRef, timeout: float = 5.0) -> str | None:
    """The engine and its version, as precisely as the engine tells: llama-cpp-python's version
    and llama.cpp's CPU features; Ollama's /api/version; an OpenAI-compatible server's
    `Server` header (vLLM and llama-server have no common version endpoint)."""
    if ref.engine == "llamacpp":
        return f"llama-cpp-python {_version('llama-cpp-python')} ({llama_system_info()})"
    if not ref.url:
        return None
    import httpx

    try:
        if ref.engine == "ollama":
            response = httpx.get(f"{ref.url}/api/version", timeout=timeout)
            return f"ollama {response.json().get('version', '?')}"
        response = httpx.get(f"{ref.url}/models", timeout=timeout)
        server = response.headers.get("server")
        return f"openai-compatible ({server})" if server else "openai-compatible"
    except (httpx.HTTPError, ValueError):
        return None
