"""The context budget: how much of the model's window a prompt uses, an alert before it fills,
and a hard refusal when it would not fit. Nothing is ever truncated silently.

    window = ContextWindow.for_model(client, "smollm2")         # num_ctx and tokenizer
    budget = window.check(messages)    # Budget(used, window, fraction, alert); raises if over
    if budget.alert: ...               # at 75% (context.alert_at) of the prompt budget

The prompt budget (`limit`) is the window minus a reserve kept for the answer: a prompt that
leaves no room to answer is as useless as one that does not fit. `fraction` is `used / limit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContextOverflowError, InvalidOptionError
from ..types import Message
from .tokens import TokenCounter, counter_for

if TYPE_CHECKING:
    from ..client import Client

log = logging.getLogger("lmgauge.context")


@dataclass(frozen=True)
class Budget:
    """What one prompt costs against the window."""

    used: int  # prompt tokens, chat template included
    window: int  # the model's context window (num_ctx)
    reserve: int  # tokens kept free for the answer
    alert_at: float = 0.75
    exact: bool = True  # False: `used` is an upper bound (remote model, no local tokenizer)

    @property
    def limit(self) -> int:
        """The most tokens a prompt may use: the window minus the answer's reserve."""
        return self.window - self.reserve

    @property
    def fraction(self) -> float:
        return self.used / self.limit

    @property
    def alert(self) -> bool:
        return self.fraction >= self.alert_at

    @property
    def over(self) -> bool:
        return self.used > self.limit

    @property
    def free(self) -> int:
        return self.limit - self.used

    def to_dict(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "window": self.window,
            "reserve": self.reserve,
            "limit": self.limit,
            "fraction": round(self.fraction, 4),
            "alert": self.alert,
            "over": self.over,
            "exact": self.exact,
        }

    def __str__(self) -> str:
        approx = "" if self.exact else "<="
        return (
            f"{approx}{self.used}/{self.limit} tokens ({self.fraction:.0%}; window {self.window}, "
            f"{self.reserve} reserved for the answer)"
        )


AlertHandler = Callable[[Budget], None]


class ContextWindow:
    """Measures prompts against one model's window. Thread-safe if its counter is."""

    def __init__(
        self,
        counter: TokenCounter,
        num_ctx: int,
        reserve: int = 512,
        alert_at: float = 0.75,
        on_alert: AlertHandler | None = None,
    ):
        if num_ctx < 16:
            raise InvalidOptionError(f"num_ctx {num_ctx} is too small (minimum 16)")
        if reserve >= num_ctx:
            raise InvalidOptionError(
                f"the answer's reserve ({reserve} tokens) must be smaller than the window ({num_ctx}); "
                "lower context.reserve or raise num_ctx"
            )
        self.counter = counter
        self.num_ctx = num_ctx
        self.reserve = reserve
        self.alert_at = alert_at
        self.on_alert = on_alert

    @classmethod
    def for_model(
        cls,
        client: Client,
        model: str,
        num_ctx: int | None = None,
        reserve: int | None = None,
        alert_at: float | None = None,
        on_alert: AlertHandler | None = None,
    ) -> ContextWindow:
        """The window a model runs with: `num_ctx` if given, else the engine's default (the
        configured num_ctx, capped at the model's trained context). The configured reserve is
        capped at a quarter of the window, so that a small window (-o num_ctx=256) still works."""
        cfg = client.settings.context
        if num_ctx is None:
            num_ctx = default_num_ctx(client, model)
        return cls(
            counter_for(client, model),
            num_ctx,
            reserve=min(cfg.reserve, num_ctx // 4) if reserve is None else reserve,
            alert_at=cfg.alert_at if alert_at is None else alert_at,
            on_alert=on_alert,
        )

    @property
    def limit(self) -> int:
        return self.num_ctx - self.reserve

    def measure(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> Budget:
        """The budget of a prompt; never raises for size."""
        return Budget(
            used=self.counter.count(messages, tools),
            window=self.num_ctx,
            reserve=self.reserve,
            alert_at=self.alert_at,
            exact=self.counter.exact,
        )

    def check(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> Budget:
        """The budget of a prompt about to be sent: fires the alert at `alert_at`, and raises
        ContextOverflowError (naming the biggest message if it alone cannot fit) at 100%."""
        budget = self.measure(messages, tools)
        if budget.over:
            self.check_messages(messages)
            raise ContextOverflowError(
                budget.used,
                self.num_ctx,
                what=f"the conversation ({len(messages)} messages; {self.reserve} tokens reserved for the answer)",
            )
        if budget.alert:
            log.warning("context at %.0f%% of the prompt budget: %s", budget.fraction * 100, budget)
            if self.on_alert is not None:
                self.on_alert(budget)
        return budget

    def check_messages(self, messages: list[Message]) -> None:
        """Refuse a single message that no compaction could make fit: it alone fills the window."""
        for i, message in enumerate(messages):
            size = self.counter.count([message])
            if size > self.limit:
                raise ContextOverflowError(
                    size,
                    self.num_ctx,
                    what=f"message {i + 1} ({message.role}) alone, with {self.reserve} tokens reserved for the answer,",
                )


def default_num_ctx(client: Client, model: str) -> int:
    """The window a model gets when none is asked for (what the engine will use)."""
    ref = client.resolve(model)
    if ref.engine == "llamacpp":
        return client.engine(ref).default_num_ctx(ref.target)  # type: ignore[attr-defined]
    return client.settings.num_ctx
