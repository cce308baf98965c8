"""The router as the gateway uses it, for model `auto`: which tiers to try, and when to move on.

`lmgauge run auto` and `lmgauge batch` escalate through RoutedStream (escalation.py); the
gateway runs its attempts itself, asynchronously, each with its own admission slot, deadline
and request-log row, so it asks this object the same three questions RoutedStream answers
inline: which tiers, in order (the router's pick, then the larger ones while escalation is on);
did this answer visibly fail (`check_answer`); may a larger tier answer after this error.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from ..errors import LmgaugeError
from ..types import ChatRequest, Result
from .escalation import check_answer, is_routing_error
from .router import Router
from .tiers import Tier

log = logging.getLogger("lmgauge.routing")


class GatewayRouter:
    def __init__(self, router: Router):
        self.router = router

    def plan(self, request: Any) -> tuple[list[Tier], str]:
        """The tiers to try, in order (the chosen one, then, with escalation on, every larger
        one), and why the router chose the first. Runs the classifier: call it off the event loop."""
        messages = request.messages if isinstance(request, ChatRequest) else request.as_chat().messages
        decision = self.router.route(messages)
        log.info("auto -> %s (%s)", decision.model, decision.reason)
        tiers = self.router.tiers
        return (tiers[decision.index :] if self.router.escalate else [tiers[decision.index]]), decision.reason

    def check(self, request: Any, result: Result) -> str | None:
        """Why an answer visibly failed (a larger tier should answer), or None."""
        return check_answer(result, request.format)

    def escalates(self, error: BaseException) -> bool:
        """True for the errors after which a larger tier may still answer."""
        return isinstance(error, LmgaugeError) and is_routing_error(error)


def gateway_router(settings: Settings, client: Any) -> GatewayRouter:
    """The gateway's router. `auto` means the same everywhere (CLI `run auto`, `route ask`, `batch
    auto`, the gateway): the tier the router picks among `[routing] tiers`, or the default model
    when no tiers are configured (one tier)."""
    return GatewayRouter(Router.from_settings(client, settings))
