"""Pointwise quality predictor: per expert, the predicted quality of that expert on this query, on
the query's sentence embedding, its TF-IDF bag of words, or either joined with a few text
statistics (length, how many numbers: cheap difficulty signals). For 0/1 outcomes a logistic regression
per expert (scores are probabilities of a good answer); for graded quality a ridge regression.
Scores are in quality units, so the cost knob trades quality against cost directly. One encoder
pass (or one TF-IDF transform) plus an (experts x features) product per decision."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from router.encoder import embed
from router.kinds import Kind, _embedding
from router.kinds._tfidf import fit_vectorizer
from router.trained import RoutingModel, bundled_onnx


class PointwiseSettings(_embedding.EncoderSettings):
    features: Literal["embedding", "tfidf", "embedding+stats", "tfidf+stats"] = Field(
        "embedding", description="The query's sentence embedding or TF-IDF, optionally with text statistics."
    )
    C: float = Field(1.0, gt=0, description="Inverse regularisation strength.")
    max_features: int = Field(30000, ge=1, description="TF-IDF vocabulary size.")


GRID = {"features": ["embedding", "tfidf", "embedding+stats"], "C": [0.1, 1.0, 10.0]}
"""Hyper-parameters nested cross-validation chooses among (C: inverse regularisation strength)."""
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def text_statistics(texts: list[str]) -> np.ndarray:
    """(n, 6): log(1 + x) of characters, words, lines, numbers, distinct numbers, and the share of
    characters that are digits or operators."""
    rows = []
    for text in texts:
        numbers = _NUMBER.findall(text)
        symbols = sum(c.isdigit() or c in "+-*/=^%$<>" for c in text)
        counts = [len(text), len(text.split()), text.count("\n") + 1, len(numbers), len(set(numbers))]
        rows.append([*np.log1p(counts), symbols / max(len(text), 1)])
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), 6)


class PointwiseRouter(RoutingModel):
    """``weights`` (experts, features) and ``bias`` (experts,) of one linear model per expert;
    ``binary``: logistic (scores = sigmoid) or ridge (scores = the linear prediction);
    ``stats_scale`` (2, 6): the training mean and deviation the text statistics are standardised by."""

    kind = "pointwise"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: PointwiseSettings,
        weights: np.ndarray,
        bias: np.ndarray,
        binary: bool,
        vectorizer: Any = None,
        encoder: str | None = None,
        stats_scale: np.ndarray | None = None,
    ):
        super().__init__(experts, expected_costs, config)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.binary = bool(binary)
        self.vectorizer = vectorizer
        self.encoder = encoder or config.encoder
        self.stats_scale = None if stats_scale is None else np.asarray(stats_scale, dtype=np.float32)

    def features(self, texts: list[str]) -> Any:
        """(n, features): unit sentence embeddings or the fitted TF-IDF (sparse), then the
        standardised text statistics if asked for."""
        texts = list(texts)
        cfg = self.config
        base, _, stats = cfg.features.partition("+")
        if base == "tfidf":
            x = self.vectorizer.transform(texts)
        else:
            x = embed(texts, self.encoder, cfg.backend, cfg.quantize)
        if not stats:
            return x
        z = (text_statistics(texts) - self.stats_scale[0]) / self.stats_scale[1]
        if base == "tfidf":
            from scipy.sparse import csr_matrix, hstack

            return hstack([x, csr_matrix(z)]).tocsr()
        return np.hstack([x, z])

    def scores(self, texts: list[str]) -> np.ndarray:
        z = np.asarray(self.features(texts) @ self.weights.T) + self.bias
        return 1.0 / (1.0 + np.exp(-z)) if self.binary else z

    def save_weights(self, folder: Path) -> None:
        scale = {} if self.stats_scale is None else {"stats_scale": self.stats_scale}
        np.savez_compressed(
            folder / "pointwise.npz", weights=self.weights, bias=self.bias, binary=self.binary, **scale
        )
        if self.vectorizer is not None:
            (folder / "vectorizer.pkl").write_bytes(pickle.dumps(self.vectorizer))

    @classmethod
    def encoder_source(cls, folder: Path, config: PointwiseSettings) -> str | None:
        return config.encoder if config.features.startswith("embedding") else None

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: PointwiseSettings
    ) -> PointwiseRouter:
        data = np.load(folder / "pointwise.npz")
        vectorizer = None
        if config.features.startswith("tfidf"):
            vectorizer = pickle.loads((folder / "vectorizer.pkl").read_bytes())
        bundle = bundled_onnx(folder) if config.backend == "onnx" else None
        return cls(
            experts,
            expected_costs,
            config,
            data["weights"],
            data["bias"],
            bool(data["binary"]),
            vectorizer,
            bundle,
            data["stats_scale"] if "stats_scale" in data else None,
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
    config: PointwiseSettings,
) -> PointwiseRouter:
    """One linear model per expert on the training queries' features and that expert's quality."""
    quality = np.nan_to_num(np.asarray(quality, dtype=float))
    binary = bool(np.isin(quality, (0.0, 1.0)).all())
    tfidf = config.features.startswith("tfidf")
    vectorizer = fit_vectorizer(texts, config.max_features) if tfidf else None
    router = PointwiseRouter(
        experts, expected_costs, config, np.zeros((len(experts), 0)), [0.0], binary, vectorizer
    )
    if config.features.endswith("+stats"):
        raw = text_statistics(texts)
        router.stats_scale = np.stack([raw.mean(axis=0), raw.std(axis=0) + 1e-6])
    x = router.features(texts)
    fitted = [_linear_fit(x, quality[:, j], binary, config.C) for j in range(len(experts))]
    router.weights = np.stack([w for w, _ in fitted]).astype(np.float32)
    router.bias = np.asarray([b for _, b in fitted], dtype=np.float32)
    return router


KIND = Kind("pointwise", PointwiseSettings, PointwiseRouter, fit, "quality", GRID)
