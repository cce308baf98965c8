"""The real `lmgauge` command in a subprocess, and the check every bad-input test makes: a
non-zero exit and one line on stderr naming what to fix, never a traceback."""

import os
import subprocess
import sys


def lmgauge(*args, input=None, env_extra=None, timeout=300):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmgauge", *args], capture_output=True, text=True, input=input, env=env, timeout=timeout
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
