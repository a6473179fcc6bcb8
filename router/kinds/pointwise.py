"""Pointwise quality predictor: per expert, the predicted quality of that expert on this query, on
the query's sentence embedding or its TF-IDF bag of words. For 0/1 outcomes a logistic regression
per expert (scores are probabilities of a good answer); for graded quality a ridge regression.
Scores are in quality units, so the cost knob trades quality against cost directly. One encoder
pass (or one TF-IDF transform) plus an (experts x features) product per decision."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from router.encoder import embed
from router.kinds import _embedding
from router.kinds._tfidf import fit_vectorizer
from router.trained import TrainedRouter, bundled_onnx

FEATURES = ("embedding", "tfidf")
DEFAULTS = {**_embedding.DEFAULTS, "features": "embedding", "C": 1.0, "max_features": 30000}
GRID = {"features": list(FEATURES), "C": [0.1, 1.0, 10.0]}
"""Hyper-parameters nested cross-validation chooses among (C: inverse regularisation strength)."""


class PointwiseRouter(TrainedRouter):
    """``weights`` (experts, features) and ``bias`` (experts,) of one linear model per expert;
    ``binary``: logistic (scores = sigmoid) or ridge (scores = the linear prediction)."""

    kind = "pointwise"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: dict[str, Any],
        weights: np.ndarray,
        bias: np.ndarray,
        binary: bool,
        vectorizer: Any = None,
        encoder: str | None = None,
    ):
        super().__init__(experts, expected_costs, {**DEFAULTS, **config})
        if self.config["features"] not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, not {self.config['features']!r}")
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.binary = bool(binary)
        self.vectorizer = vectorizer
        self.encoder = encoder or self.config["encoder"]

    def features(self, texts: list[str]) -> Any:
        """(n, features): unit sentence embeddings, or the fitted TF-IDF (sparse)."""
        if self.config["features"] == "tfidf":
            return self.vectorizer.transform(list(texts))
        cfg = self.config
        return embed(list(texts), self.encoder, cfg["backend"], cfg["quantize"])

    def scores(self, texts: list[str]) -> np.ndarray:
        z = np.asarray(self.features(texts) @ self.weights.T) + self.bias
        return 1.0 / (1.0 + np.exp(-z)) if self.binary else z

    def save_weights(self, folder: Path) -> None:
        np.savez_compressed(
            folder / "pointwise.npz", weights=self.weights, bias=self.bias, binary=self.binary
        )
        if self.vectorizer is not None:
            (folder / "vectorizer.pkl").write_bytes(pickle.dumps(self.vectorizer))

    @classmethod
    def encoder_source(cls, folder: Path, config: dict[str, Any]) -> str | None:
        return config.get("encoder", DEFAULTS["encoder"]) if config.get("features") == "embedding" else None

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> PointwiseRouter:
        data = np.load(folder / "pointwise.npz")
        config = {**DEFAULTS, **config}
        vectorizer = None
        if config["features"] == "tfidf":
            vectorizer = pickle.loads((folder / "vectorizer.pkl").read_bytes())
        bundle = bundled_onnx(folder) if config["backend"] == "onnx" else None
        return cls(
            experts,
            expected_costs,
            config,
            data["weights"],
            data["bias"],
            bool(data["binary"]),
            vectorizer,
            bundle,
        )


def _linear_fit(x: Any, y: np.ndarray, binary: bool, c: float) -> tuple[np.ndarray, float]:
    """Weights and bias of one expert's model (a constant outcome: no weights, its rate as bias)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    if binary and len(np.unique(y)) < 2:
        rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        return np.zeros(x.shape[1]), float(np.log(rate / (1 - rate)))
    if binary:
        model = LogisticRegression(C=c, max_iter=2000).fit(x, y.astype(int))
        return model.coef_[0], float(model.intercept_[0])
    model = Ridge(alpha=1.0 / c).fit(x, y)
    return np.asarray(model.coef_), float(model.intercept_)


def fit(
    texts: list[str],
    quality: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> PointwiseRouter:
    """One linear model per expert on the training queries' features and that expert's quality."""
    config = {**DEFAULTS, **config}
    quality = np.nan_to_num(np.asarray(quality, dtype=float))
    binary = bool(np.isin(quality, (0.0, 1.0)).all())
    vectorizer = fit_vectorizer(texts, config["max_features"]) if config["features"] == "tfidf" else None
    router = PointwiseRouter(
        experts, expected_costs, config, np.zeros((len(experts), 0)), [0.0], binary, vectorizer
    )
    x = router.features(texts)
    fitted = [_linear_fit(x, quality[:, j], binary, config["C"]) for j in range(len(experts))]
    router.weights = np.stack([w for w, _ in fitted]).astype(np.float32)
    router.bias = np.asarray([b for _, b in fitted], dtype=np.float32)
    return router


ROUTER, TARGETS = PointwiseRouter, "quality"
