"""The router `lmgauge route calibrate` fitted, saved as JSON (~/.lmgauge/router.json).

It stores the labeled examples and hyper-parameters, not weights: loading refits (~0.1 s,
deterministic) with whichever embedder is configured now. A file fitted for other tiers is
ignored with a warning.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..config import Settings
from ..embedding import Embedder
from ..errors import InvalidOptionError
from .classifier import FeatureClassifier
from .tiers import Tier

log = logging.getLogger("lmgauge.routing")


def calibrated_path(settings: Settings) -> Path:
    return (settings.routing.calibrated or settings.home / "router.json").expanduser()


def save_calibrated(
    path: Path, tiers: list[Tier], classifier: FeatureClassifier, report: dict[str, Any] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "tiers": {t.name: t.model for t in tiers},
        "classifier": classifier.to_dict(),
        "report": report or {},
        "created": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def load_calibrated(path: Path, tiers: list[Tier], embedder: Embedder) -> FeatureClassifier | None:
    """The router `route calibrate` fitted, if it was fitted for these same tiers."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidOptionError(
            f"cannot read the calibrated router {path}: {exc}; delete it or run `lmgauge route calibrate` again"
        ) from None
    if data.get("tiers") != {t.name: t.model for t in tiers}:
        log.warning(
            "routing: %s was calibrated for other tiers (%s); using the default classifier", path, data.get("tiers")
        )
        return None
    return FeatureClassifier.from_dict(data["classifier"], embedder)
