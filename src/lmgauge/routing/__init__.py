"""Send each request to the cheapest model that can answer it (the model name `auto`).

router = Router.from_settings(client)              # tiers and classifier from [routing]
answer = router.answer(messages, options={"temperature": 0})
answer.result.content, answer.decision, answer.attempts   # attempts: which tiers ran and why

queries.py         the shipped labeled set (simple / moderate / complex, train and test splits)
features.py        hand-made features of a request's text, and which text is read
classifier.py      the Classifier protocol; FeatureClassifier (features + kNN + embedding ->
                   logistic regression, ~1 ms), the default; OnlyTier for a single tier
llm_classifier.py  LLMClassifier: ask a model (schema-constrained labels, voted confidence)
tiers.py           Tier, Decision, tiers from settings or --tier flags, levels spread on tiers
router.py          Router: classify, pick a tier (one up below the confidence threshold),
                   answer, log to route_log
escalation.py      check_answer (empty, cut off, broken JSON, refusal), the errors a bigger
                   tier may not have, and RoutedStream, the escalating answer loop
saved.py           the calibrated router file (`route calibrate` writes, Router loads)
calibration.py     `route calibrate`: checkable tasks, which tier answers each correctly,
                   the quality-vs-cost curve, the fitted router
evaluation.py      `lmgauge eval routing`: confusion matrices, macro-F1, time saved
gateway.py         the gateway's `auto`: first tier, next tier, the check, per request
"""

from .classifier import (
    Classifier,
    FeatureClassifier,
    OnlyTier,
    default_classifier,
    fit_logistic,
)
from .escalation import (
    ESCALATING_ERRORS,
    REFUSAL,
    Attempt,
    RoutedAnswer,
    RoutedStream,
    check_answer,
    is_routing_error,
)
from .features import FEATURE_NAMES, request_text, text_features
from .gateway import GatewayRouter, gateway_router
from .llm_classifier import LLM_FORMAT, LLM_SYSTEM, LLMClassifier
from .queries import LEVELS, LabeledQuery, load_queries
from .router import ROUTE_LOG_DDL, Router, router_embedder
from .saved import calibrated_path, load_calibrated, save_calibrated
from .tiers import Decision, Tier, parse_tiers, spread, tiers_from_settings

__all__ = [
    "ESCALATING_ERRORS",
    "FEATURE_NAMES",
    "LEVELS",
    "LLM_FORMAT",
    "LLM_SYSTEM",
    "REFUSAL",
    "ROUTE_LOG_DDL",
    "Attempt",
    "Classifier",
    "Decision",
    "FeatureClassifier",
    "GatewayRouter",
    "LLMClassifier",
    "LabeledQuery",
    "OnlyTier",
    "RoutedAnswer",
    "RoutedStream",
    "Router",
    "Tier",
    "calibrated_path",
    "check_answer",
    "default_classifier",
    "fit_logistic",
    "gateway_router",
    "is_routing_error",
    "load_calibrated",
    "load_queries",
    "parse_tiers",
    "request_text",
    "router_embedder",
    "save_calibrated",
    "spread",
    "text_features",
    "tiers_from_settings",
]
