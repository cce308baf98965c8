"""Whether an upstream node should get requests, decided by what requests themselves see.

A node can answer its liveness URL (`/api/version`, `/models`) and still never produce a token:
a stuck GPU, a wedged runner, a model that will not load. So a liveness check alone cannot
bring a node back, and it cannot be the only way to notice one is gone. Here:

- **Real traffic is the health signal.** A request that fails on a node before its first token
  (refused or dropped connection, a 5xx, no first token within `first_token_timeout`) marks
  the node down; a request that gets its first token from a node marks it up.
- **A node that is down cools down** for `cooldown_s` (`[resilience] breaker_reset`, the same
  cooldown as the library's circuit breakers): no health check can bring it back before then,
  so a node that fails every request is not put back every few seconds by a passing liveness
  check. Requests skip it, trying it only as a last resort when every node that is up failed.
- **After the cooldown a probe asks for what requests use**: a one-token generation of the
  pool's model (`probe_body`), with the first-token timeout. It passing brings the node back;
  failing starts another cooldown.
- **Nodes that are up** get the cheap liveness check between requests (no generation, so an idle
  node's model is not kept loaded by the gateway); failing it marks them down.

The clock is injectable so the state machine is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class NodeHealth:
    """One node's state: up, or down since a moment and cooling down until another."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.down_at: float | None = None  # clock() when the current cooldown started
        self.last_error: str | None = None
        self.times_down = 0  # how often it went from up to down
        self.last_change: float = time.time()  # wall clock of the last up <-> down change

    @property
    def up(self) -> bool:
        return self.down_at is None

    def failed(self, why: str) -> bool:
        """A failure seen by a request or a check. True when it took the node from up to down.
        A failure while down (a last-resort request, a probe) restarts the cooldown."""
        newly = self.down_at is None
        self.down_at = self.clock()
        self.last_error = why
        if newly:
            self.times_down += 1
            self.last_change = time.time()
        return newly

    def succeeded(self) -> bool:
        """A first token from the node, or a passing probe. True when it brought the node back."""
        back = self.down_at is not None
        self.down_at = None
        self.last_error = None
        if back:
            self.last_change = time.time()
        return back

    def probe_due(self) -> bool:
        """Down, and its cooldown is over: time to try a real (tiny) generation."""
        return self.down_at is not None and self.clock() - self.down_at >= self.cooldown_s

    def cooling_for(self) -> float:
        """Seconds left in the cooldown (0 when up or when a probe is due)."""
        if self.down_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.down_at))


def probe_body(kind: str, target: str) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the smallest real generation a node of this kind can be asked for:
    one chat turn, one output token, not streamed (so a hung node holds the whole answer)."""
    messages = [{"role": "user", "content": "Hi"}]
    if kind == "ollama":
        return "/api/chat", {
            "model": target,
            "messages": messages,
            "stream": False,
            "options": {"num_predict": 1, "temperature": 0},
        }
    return "/chat/completions", {
        "model": target,
        "messages": messages,
        "stream": False,
        "max_tokens": 1,
        "temperature": 0,
    }
