"""How much model a request needs: the Classifier protocol and the default feature classifier.

`FeatureClassifier` (~1 ms): the hand-made features (features.py), the request's similarity to
labeled examples (the mean cosine similarity of its k nearest neighbours in each class, WordLlama
embeddings) and the embedding itself, into a multinomial logistic regression (numpy). Its
classes are difficulty levels (the shipped set) or tier names (a router `route calibrate` fitted).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from ..embedding import Embedder
from ..errors import InvalidOptionError
from .features import FEATURE_NAMES, text_features
from .queries import LEVELS, load_queries


class Classifier(Protocol):
    name: str
    classes: tuple[str, ...]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """One row of class probabilities per text (columns in `classes` order)."""
        ...


class OnlyTier:
    """The classifier when there is a single tier (no `[routing] tiers`: the default model):
    there is nothing to decide, so no embedder is loaded and no time is spent."""

    name = "single tier"

    def __init__(self, tier: str):
        self.classes: tuple[str, ...] = (tier,)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 1))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1.0, iterations: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty, by full-batch gradient descent with
    Nesterov momentum (a few hundred rows: exact enough and ~50 ms). Returns (weights, bias)."""
    n, d = x.shape
    onehot = np.eye(n_classes, dtype=np.float64)[y]
    w = np.zeros((d, n_classes))
    b = np.zeros(n_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr, momentum = 0.5, 0.9
    x64 = x.astype(np.float64)
    for _ in range(iterations):
        wl, bl = w + momentum * vw, b + momentum * vb  # look-ahead point
        p = _softmax(x64 @ wl + bl)
        grad_w = x64.T @ (p - onehot) / n + l2 * wl / n
        grad_b = (p - onehot).mean(axis=0)
        vw = momentum * vw - lr * grad_w
        vb = momentum * vb - lr * grad_b
        w, b = w + vw, b + vb
    return w.astype(np.float32), b.astype(np.float32)


class FeatureClassifier:
    """Features + kNN similarity to labeled examples + embedding -> logistic regression."""

    name = "features"

    def __init__(self, embedder: Embedder, k: int = 5, l2: float = 0.3):
        self.embedder = embedder
        self.k = k
        self.l2 = l2
        self.classes: tuple[str, ...] = ()
        self._bank: np.ndarray | None = None  # training embeddings (the kNN "examples")
        self._bank_labels: np.ndarray | None = None
        self._texts: list[str] = []
        self._labels: list[str] = []
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._w: np.ndarray | None = None
        self._b: np.ndarray | None = None

    # --- the design matrix ---------------------------------------------------------------------
    def _knn(self, emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        """Per class: mean cosine similarity of the k most similar labeled examples."""
        assert self._bank is not None and self._bank_labels is not None
        sims = emb @ self._bank.T
        if leave_one_out:  # a training example must not find itself
            np.fill_diagonal(sims, -np.inf)
        out = np.zeros((len(emb), len(self.classes)), dtype=np.float32)
        for c in range(len(self.classes)):
            cls_sims = sims[:, self._bank_labels == c]
            k = min(self.k, cls_sims.shape[1] - (1 if leave_one_out else 0))
            if k <= 0:
                continue
            top = -np.sort(-cls_sims, axis=1)[:, :k]
            out[:, c] = top.mean(axis=1)
        return out

    def _design(self, texts: list[str], emb: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        hand = np.stack([text_features(t) for t in texts]) if texts else np.zeros((0, len(FEATURE_NAMES)))
        assert self._mean is not None and self._std is not None
        hand = (hand - self._mean) / self._std
        return np.hstack([hand, 4.0 * self._knn(emb, leave_one_out), emb]).astype(np.float32)

    # --- fitting and predicting ----------------------------------------------------------------
    def fit(self, texts: list[str], labels: list[str], classes: Iterable[str] | None = None) -> FeatureClassifier:
        if len(texts) != len(labels) or not texts:
            raise InvalidOptionError("the router needs labeled examples to learn from")
        self.classes = tuple(classes) if classes is not None else tuple(sorted(set(labels), key=_level_order))
        unknown = set(labels) - set(self.classes)
        if unknown:
            raise InvalidOptionError(f"labels {sorted(unknown)} are not among the classes {self.classes}")
        self._texts, self._labels = list(texts), list(labels)
        y = np.array([self.classes.index(label) for label in labels])
        emb = self.embedder.embed(list(texts))
        self._bank, self._bank_labels = emb, y
        hand = np.stack([text_features(t) for t in texts])
        self._mean = hand.mean(axis=0)
        self._std = hand.std(axis=0) + 1e-6
        x = self._design(list(texts), emb, leave_one_out=True)
        self._w, self._b = fit_logistic(x, y, len(self.classes), l2=self.l2)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self._w is None:
            raise InvalidOptionError("the feature classifier is not trained yet (call fit)")
        emb = self.embedder.embed(list(texts))
        return _softmax(self._design(list(texts), emb) @ self._w + self._b)

    # --- persistence: the examples and hyper-parameters; weights are refitted on load ------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "k": self.k,
            "l2": self.l2,
            "classes": list(self.classes),
            "texts": self._texts,
            "labels": self._labels,
            "embedder": self.embedder.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], embedder: Embedder) -> FeatureClassifier:
        """Refit from the stored examples: deterministic, ~0.1 s, and valid for whichever
        embedder is configured now (stored weights would silently depend on the old one)."""
        return cls(embedder, k=data.get("k", 5), l2=data.get("l2", 0.3)).fit(
            data["texts"], data["labels"], classes=data["classes"]
        )


def _level_order(label: str) -> tuple[int, str]:
    return (LEVELS.index(label) if label in LEVELS else len(LEVELS), label)


def default_classifier(embedder: Embedder, split: str | None = None) -> FeatureClassifier:
    """The feature classifier trained on the shipped labeled set (both splits unless told)."""
    data = load_queries(split)
    return FeatureClassifier(embedder).fit([q.text for q in data], [q.label for q in data], classes=LEVELS)
