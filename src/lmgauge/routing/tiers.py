"""Tiers (model names, cheapest first) and the decision that picks one of them.

[routing] tiers = {small = "smollm2", large = "qwen2.5-coder:1.5b"}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import Settings
from ..errors import InvalidOptionError


def spread(position: int, n_classes: int, n_tiers: int) -> int:
    """Class `position` of `n_classes` ordered ones onto `n_tiers` tiers, evenly; halfway rounds up
    (three levels on two tiers: moderate goes to the larger one, quality first)."""
    return math.floor(position * (n_tiers - 1) / max(n_classes - 1, 1) + 0.5)


@dataclass(frozen=True)
class Tier:
    name: str
    model: str


@dataclass
class Decision:
    tier: str
    model: str
    confidence: float  # the classifier's probability for its chosen class
    reason: str
    index: int  # position of the tier, 0 = cheapest
    label: str  # the classifier's class (a difficulty level, or a tier name when calibrated)
    probabilities: dict[str, float] = field(default_factory=dict)
    classifier: str = ""
    overhead_ms: float = 0.0  # time spent deciding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiers_from_settings(settings: Settings) -> list[Tier]:
    tiers = settings.routing.tiers
    if not tiers:
        return [Tier("default", settings.default_model)]
    return [Tier(name, model) for name, model in tiers.items()]


def parse_tiers(pairs: list[str]) -> dict[str, str]:
    """--tier NAME=MODEL flags (cheapest first) into an ordered dict."""
    tiers: dict[str, str] = {}
    for pair in pairs:
        name, sep, model = pair.partition("=")
        if not sep or not name.strip() or not model.strip():
            raise InvalidOptionError(f"--tier {pair!r} must look like NAME=MODEL, e.g. small=smollm2")
        if name.strip() in tiers:
            raise InvalidOptionError(f"tier {name.strip()!r} is given twice")
        tiers[name.strip()] = model.strip()
    return tiers
