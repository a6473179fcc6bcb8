"""MLP-Router: bag-of-words (scikit-learn TF-IDF fitted on the training queries) -> MLP.

The first layer is a sparse linear layer over the non-zero TF-IDF features: a query costs a few
dozen weight rows, not a dense matmul over the whole vocabulary. The features are the fitted
vectorizer's own (its analyzer, vocabulary and idf), computed straight into index/weight arrays:
the same numbers as ``vectorizer.transform`` without building a scipy matrix, which is most of the
cost of routing one query. Training fits a torch module (``router/kinds/_bow_mlp.py``, an
``EmbeddingBag``); serving scores with its weights in numpy, so a router replica imports no torch.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from sklearn.feature_extraction.text import TfidfVectorizer

from router.kinds import Kind, NeuralSettings
from router.kinds._tfidf import fit_vectorizer
from router.trained import RoutingModel


class MLPSettings(NeuralSettings):
    hidden: int = Field(256, ge=1, description="Hidden units.")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(15, ge=1)
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    max_features: int = Field(30000, ge=1, description="TF-IDF vocabulary size.")


GRID = {"epochs": [5, 15, 40]}
"""What nested cross-validation chooses among."""


class TfidfBags:
    """A fitted (sublinear-tf, l2) ``TfidfVectorizer``'s features of one text: indices and weights."""

    def __init__(self, vectorizer: TfidfVectorizer):
        if not (vectorizer.sublinear_tf and vectorizer.norm == "l2" and vectorizer.use_idf):
            raise ValueError("TfidfBags needs a vectorizer with sublinear_tf=True, norm='l2', use_idf=True")
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary = vectorizer.vocabulary_
        self.idf = vectorizer.idf_.astype(np.float32)

    def analyse(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's non-zero feature indices and their (l2-normalised) TF-IDF weights."""
        counts = Counter(i for i in map(self.vocabulary.get, self.analyze(text)) if i is not None)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        w = (1.0 + np.log(tf)) * self.idf[idx]
        norm = float(np.linalg.norm(w))
        return idx, (w / norm if norm > 0 else w)


WEIGHTS = ("bag", "bias", "out_weight", "out_bias")
"""The MLP's arrays: bag (vocabulary, hidden), bias (hidden), out_weight (experts, hidden), out_bias."""


class MLPRouter(RoutingModel):
    kind = "mlp"
    # ~0.03 ms a decision (numpy; 0.05 ms with the torch module): inline it holds the event loop
    # well under 1% of the time at 60 requests/s, while the worker-thread hop would add ~0.05 ms:
    # decide inline.
    blocking = False

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: MLPSettings,
        vectorizer: TfidfVectorizer,
        weights: dict[str, np.ndarray],
    ):
        super().__init__(experts, expected_costs, config)
        self.vectorizer = vectorizer
        self.features = TfidfBags(vectorizer)
        self.weights = {k: np.asarray(weights[k], np.float32) for k in WEIGHTS}

    def scores(self, texts: list[str]) -> np.ndarray:
        """Softmax over experts of TF-IDF -> sparse linear -> ReLU -> linear (dropout is training's)."""
        w = self.weights
        hidden = np.empty((len(texts), w["bias"].shape[0]), np.float32)
        for i, text in enumerate(texts):
            idx, weight = self.features.analyse(text)
            hidden[i] = weight @ w["bag"][idx] + w["bias"]
        logits = np.maximum(hidden, 0.0) @ w["out_weight"].T + w["out_bias"]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def save_weights(self, folder: Path) -> None:
        (folder / "vectorizer.pkl").write_bytes(pickle.dumps(self.vectorizer))
        np.savez(folder / "mlp.npz", **self.weights)

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: MLPSettings
    ) -> MLPRouter:
        vectorizer = pickle.loads((folder / "vectorizer.pkl").read_bytes())
        if (folder / "mlp.npz").exists():
            with np.load(folder / "mlp.npz") as stored:
                weights = {k: stored[k] for k in WEIGHTS}
        else:  # an artifact from before 2026-12-05: a torch state dict
            from router.kinds._bow_mlp import saved_arrays

            weights = saved_arrays(folder / "mlp.pt")
        return cls(experts, expected_costs, config, vectorizer, weights)


def build_model(n_experts: int, config: MLPSettings, vectorizer: TfidfVectorizer) -> Any:
    """The torch module training fits (``router/kinds/_bow_mlp.py``)."""
    from router.kinds._bow_mlp import BowMLP

    return BowMLP(
        TfidfBags(vectorizer),
        len(vectorizer.vocabulary_),
        n_experts,
        config.hidden,
        config.dropout,
        config.seed,
    )


def prepare(texts: list[str], config: MLPSettings) -> dict[str, Any]:
    """The vocabulary, fitted once on the driver and shipped to every training worker."""
    return {"vectorizer": fit_vectorizer(texts, config.max_features)}


def from_model(
    experts: list[str],
    expected_costs: np.ndarray,
    config: MLPSettings,
    model: Any,
    vectorizer: TfidfVectorizer,
    **_: Any,
) -> MLPRouter:
    """The router serving a trained ``BowMLP``'s weights."""
    return MLPRouter(experts, expected_costs, config, vectorizer, model.arrays())


KIND = Kind("mlp", MLPSettings, MLPRouter, None, "soft_labels", GRID, prepare, build_model, from_model)
