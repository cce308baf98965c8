"""The repository's habits, checked by the test command: ruff's lint rules, ruff's formatting and mypy.

Each tool reads its configuration from pyproject.toml ([tool.ruff], [tool.mypy]) and runs as a
subprocess of this interpreter, so it is the version the test extra installed. On failure the
tool's own output is the assertion message: it names each file, line and rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_ruff_check_finds_nothing():
    assert_clean(run_tool("ruff", "check", "--no-cache", "."))


def test_ruff_format_changes_nothing():
    assert_clean(run_tool("ruff", "format", "--check", "--no-cache", "."))


def test_mypy_finds_nothing():
    # The cache lives beside the tests' other downloads, not in the work tree (mypy checks each
    # entry against its source file, so a reused cache is safe; it cuts a ~30 s run to a few).
    cache = Path.home() / ".cache" / "lmgauge-tests" / "mypy"
    assert_clean(run_tool("mypy", "--cache-dir", str(cache)))
