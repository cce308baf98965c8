"""The two consoles every command prints to: answers and tables on stdout, everything else
(progress, notes, warnings, errors) on stderr, so `lmgauge ... | jq` reads only the results."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
