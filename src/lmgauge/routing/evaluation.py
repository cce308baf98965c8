"""`lmgauge eval routing`: how well the router classifies, what deciding costs, what it saves.

- Classification on the shipped test split (the feature classifier is trained on the train split
  only): accuracy, macro-F1, confusion matrix, and the classifier's overhead per query (the whole
  `Router.route` call: embedding, features, model; p50/p95 over the test queries).
- Routing: the share of test queries sent to each tier, and the time saved against sending
  everything to the largest tier. Times are real: a stratified sample of test queries is answered
  by every tier (temperature 0, capped output; tiers loaded first and taking turns query by
  query), giving a mean E2E per tier and difficulty level; each routed query then costs its
  tier's mean for its level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..embedding import Embedder
from ..errors import LmgaugeError
from ..stats import summarize
from .classifier import Classifier, default_classifier
from .queries import LEVELS, LabeledQuery
from .router import Router
from .tiers import Tier


@dataclass
class ClassifierReport:
    classifier: str
    n: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    labels: list[str]
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    overhead_ms: dict[str, Any]  # Summary of Router.route time per query
    model: str | None = None


def confusion_matrix(truth: list[str], predicted: list[str], labels: list[str]) -> np.ndarray:
    m = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        m[labels.index(t), labels.index(p)] += 1
    return m


def macro_f1(m: np.ndarray) -> tuple[float, list[float]]:
    f1s = []
    for i in range(len(m)):
        tp = m[i, i]
        precision = tp / m[:, i].sum() if m[:, i].sum() else 0.0
        recall = tp / m[i, :].sum() if m[i, :].sum() else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(f1s)), f1s


def evaluate_classifier(
    classifier: Classifier,
    test: list[LabeledQuery],
    tiers: list[Tier],
    model: str | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[ClassifierReport, list[str]]:
    """Classify each test query through a Router (so the overhead is what a request pays).
    Returns the report and the tier chosen for each query."""
    router = Router(None, tiers, classifier, threshold=0.0)
    router.route([{"role": "user", "content": "warm-up"}])  # first-call costs (caches, lazy imports) excluded
    labels = list(classifier.classes)
    predicted, overhead = [], []
    for q in test:
        t0 = time.perf_counter_ns()
        decision = router.route([{"role": "user", "content": q.text}])
        overhead.append((time.perf_counter_ns() - t0) / 1e6)
        predicted.append(decision.label)
        if progress is not None:
            progress()
    truth = [q.label for q in test]
    m = confusion_matrix(truth, predicted, labels)
    f1, per_class = macro_f1(m)
    report = ClassifierReport(
        classifier=classifier.name,
        n=len(test),
        accuracy=float(np.trace(m) / max(m.sum(), 1)),
        macro_f1=f1,
        per_class_f1=dict(zip(labels, per_class, strict=True)),
        labels=labels,
        confusion=m.tolist(),
        overhead_ms=summarize(overhead).to_dict(),
        model=model,
    )
    return report, predicted


@dataclass
class TierTimes:
    tier: str
    model: str
    mean_e2e_ms: dict[str, float]  # per difficulty level
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0


def sample_queries(test: list[LabeledQuery], per_level: int) -> list[LabeledQuery]:
    """The first `per_level` test queries of each level (the file's order is fixed)."""
    return [q for level in LEVELS for q in [x for x in test if x.label == level][:per_level]]


def measure_tiers(
    caller: Any,
    tiers: list[Tier],
    sample: list[LabeledQuery],
    num_predict: int = 128,
    progress: Callable[[], None] | None = None,
) -> list[TierTimes]:
    """Every tier answers every sample query (greedy, capped output). Each tier is loaded by a
    warm-up call first (not timed), and the tiers take turns query by query, so a load spike on a
    shared machine hits all of them alike instead of whichever tier happened to be running."""
    samples: dict[str, dict[str, list[float]]] = {t.name: {level: [] for level in LEVELS} for t in tiers}
    errors = {t.name: 0 for t in tiers}
    options = {"temperature": 0, "seed": 0, "num_predict": num_predict}
    for tier in tiers:
        try:
            caller.chat(tier.model, [{"role": "user", "content": "hi"}], options={**options, "num_predict": 1})
        except LmgaugeError:
            errors[tier.name] += 1
    for q in sample:
        for tier in tiers:
            try:
                result = caller.chat(tier.model, [{"role": "user", "content": q.text}], options=options)
                if result.timings.e2e_ms is not None:
                    samples[tier.name][q.label].append(result.timings.e2e_ms)
            except LmgaugeError:
                errors[tier.name] += 1
            if progress is not None:
                progress()
    return [
        TierTimes(
            t.name,
            t.model,
            {lvl: float(np.mean(v)) for lvl, v in samples[t.name].items() if v},
            samples[t.name],
            errors[t.name],
        )
        for t in tiers
    ]


def time_saved(routed_tiers: list[str], truth: list[str], times: list[TierTimes]) -> dict[str, Any]:
    """Estimated E2E of the routed test split vs always-largest, from the measured means."""
    by_tier = {t.tier: t for t in times}
    largest = times[-1]

    def cost(tier: str, level: str) -> float:
        means = by_tier[tier].mean_e2e_ms
        return means.get(level, float(np.mean(list(means.values()))) if means else 0.0)

    routed = sum(cost(t, level) for t, level in zip(routed_tiers, truth, strict=True))
    always = sum(cost(largest.tier, level) for level in truth)
    return {"routed_ms": routed, "always_largest_ms": always, "saved_share": (1 - routed / always) if always else 0.0}


def tier_shares(routed_tiers: list[str], tiers: list[Tier]) -> dict[str, float]:
    n = max(len(routed_tiers), 1)
    return {t.name: routed_tiers.count(t.name) / n for t in tiers}


def routed_tiers_for(
    classifier: Classifier, test: list[LabeledQuery], tiers: list[Tier], threshold: float
) -> list[str]:
    router = Router(None, tiers, classifier, threshold=threshold)
    return [router.route([{"role": "user", "content": q.text}]).tier for q in test]


def feature_classifier_for_eval(embedder: Embedder) -> Classifier:
    """Trained on the train split only: the test split is never seen."""
    return default_classifier(embedder, split="train")


def report_dict(
    reports: list[ClassifierReport],
    shares: dict[str, float] | None,
    times: list[TierTimes] | None,
    saved: dict[str, Any] | None,
    tiers: list[Tier],
    threshold: float,
) -> dict[str, Any]:
    return {
        "test_queries": reports[0].n if reports else 0,
        "classifiers": [asdict(r) for r in reports],
        "tiers": {t.name: t.model for t in tiers},
        "confidence_threshold": threshold,
        "tier_share": shares,
        "tier_times": [
            {"tier": t.tier, "model": t.model, "mean_e2e_ms": t.mean_e2e_ms, "errors": t.errors} for t in times
        ]
        if times
        else None,
        "time_saved": saved,
    }
