"""The response cache's commands: `cache stats|clear` and `eval cache` (paraphrase hits vs
near-miss false hits). The cache itself is lmgauge.cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings, load_settings
from ..errors import InvalidOptionError
from .console import out
from .options import JsonFlag
from .render import print_cache_eval

BackendFlag = Annotated[
    str | None,
    typer.Option(
        help="sqlite (default: a temporary database) or redis ([cache] redis_url; the eval's keys are removed after)."
    ),
]
ThresholdFlag = Annotated[float | None, typer.Option(help="Similarity threshold (default: [cache] similarity).")]


def eval_cache(backend: BackendFlag = None, threshold: ThresholdFlag = None, json_out: JsonFlag = False) -> None:
    """Semantic cache: hit rate on paraphrase pairs, false-hit rate on near misses (negation, number,
    entity swaps), a threshold sweep; exact-hit lookup latency."""
    from ..cache.evaluation import load_pairs, rates, sweep

    settings = load_settings()
    cs = settings.cache.model_copy(
        update={"semantic": True, "enabled": True, **({"similarity": threshold} if threshold else {})}
    )
    kind = backend or "sqlite"
    if kind not in ("sqlite", "redis"):
        raise InvalidOptionError("--backend must be sqlite or redis")
    pairs = load_pairs()
    outcomes, latency = _run_eval(cs, kind, pairs)
    overall = rates(outcomes)
    by_split = {s: rates([o for o in outcomes if o.pair.split == s]) for s in ("train", "test")}
    table_sweep = sweep(outcomes, [round(0.6 + 0.05 * i, 2) for i in range(8)])
    data = {
        "backend": kind,
        "threshold": cs.similarity,
        "pairs": len(pairs),
        "overall": overall,
        "by_split": by_split,
        "sweep": table_sweep,
        "exact_hit_ms": latency,
        "misses": [
            {
                "id": o.pair.id,
                "kind": o.pair.kind,
                "a": o.pair.a,
                "b": o.pair.b,
                "similarity": o.similarity,
                "guard": o.guard,
            }
            for o in outcomes
            if o.hit != o.pair.should_hit
        ],
    }
    if json_out:
        out.print_json(data=data)
        return
    print_cache_eval(data)


def _run_eval(cs: Any, kind: str, pairs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Every labeled pair through a fresh cache on the chosen backend, emptied afterwards."""
    import tempfile

    from ..cache import RedisBackend, ResponseCache, SQLiteBackend
    from ..cache.evaluation import exact_hit_latency, run_pairs
    from ..embedding import make_embedder
    from ..store import Store

    with tempfile.TemporaryDirectory(prefix="lmgauge-eval-cache-") as tmp:
        if kind == "redis":
            store_backend: Any = RedisBackend(cs.redis_url, prefix=f"lmgauge:eval:{os.getpid()}:")
        else:
            store_backend = SQLiteBackend(Store(Path(tmp) / "cache.db"))
        cache = ResponseCache(store_backend, cs, make_embedder(cs.embedder))
        try:
            return run_pairs(cache, pairs), exact_hit_latency(cache)
        finally:
            cache.clear()


def _exact_cache(settings: Settings) -> Any:
    """The configured cache without its semantic half (stats and clearing need no embedder)."""
    from ..cache import ResponseCache

    return ResponseCache.from_settings(
        settings.model_copy(update={"cache": settings.cache.model_copy(update={"semantic": False})})
    )


def cache_stats(json_out: JsonFlag = False) -> None:
    """Entries and hits in the response cache."""
    stats = _exact_cache(load_settings()).stats()
    if json_out:
        out.print_json(data=stats.__dict__)
        return
    details = ", ".join(f"{k} {v}" for k, v in stats.details.items())
    out.print(
        f"{stats.backend}: {stats.entries} entries, {stats.hits} hits served" + (f" ({details})" if details else "")
    )


def cache_clear() -> None:
    """Remove every cached answer."""
    out.print(f"removed {_exact_cache(load_settings()).clear()} cached answers")
