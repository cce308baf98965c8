"""The router as the gateway uses it, for model `auto`: the tiers and their escalation rules.

`choose(request)` names the model of the tier the router picks; the gateway streams that
model's answer.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from ..types import ChatRequest
from .router import Router

log = logging.getLogger("lmgauge.routing")

class GatewayRouter:
    """What the gateway asks when a client sends model `auto`: the model of the tier the router
    picks. The gateway streams that model's answer as it comes, so there is no escalation after
    the fact there (`lmgauge run auto` and `lmgauge batch` escalate)."""

    def __init__(self, router: Router):
        self.router = router

    def choose(self, request: Any) -> str:
        messages = request.messages if isinstance(request, ChatRequest) else request.as_chat().messages
        decision = self.router.route(messages)
        log.info("auto -> %s (%s)", decision.model, decision.reason)
        return decision.model


def gateway_router(settings: Settings, client: Any) -> GatewayRouter:
    """The gateway's hook. `auto` means the same everywhere (CLI `run auto`, `route ask`, `batch
    auto`, the gateway): the tier the router picks among `[routing] tiers`, or the default model
    when no tiers are configured (one tier)."""
    return GatewayRouter(Router.from_settings(client, settings))
