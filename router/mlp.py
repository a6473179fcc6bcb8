"""MLP-Router: bag-of-words (scikit-learn TF-IDF fitted on the training queries) -> MLP (torch).

The first layer is an ``EmbeddingBag`` over the non-zero TF-IDF features, i.e. a sparse linear
layer: a query costs a few dozen weight rows, not a dense matmul over the whole vocabulary.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from router.neural import fit_epochs, predict_proba
from router.trained import TrainedRouter

DEFAULTS = {
    "hidden": 256,
    "dropout": 0.1,
    "epochs": 15,
    "lr": 2e-3,
    "batch_size": 64,
    "max_features": 30000,
    "seed": 0,
}


def fit_vectorizer(texts: list[str], max_features: int = 30000) -> TfidfVectorizer:
    """TF-IDF over words and word pairs of the training queries."""
    vectorizer = TfidfVectorizer(max_features=max_features, ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    return vectorizer.fit(texts)


class BowMLP(torch.nn.Module):
    """texts -> TF-IDF (sparse) -> EmbeddingBag (sparse linear) -> ReLU -> dropout -> logits."""

    def __init__(self, vectorizer: TfidfVectorizer, n_experts: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.vectorizer = vectorizer
        self.bag = torch.nn.EmbeddingBag(len(vectorizer.vocabulary_), hidden, mode="sum")
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.out = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_experts)
        )

    def forward(self, texts: list[str]) -> torch.Tensor:
        x = self.vectorizer.transform(texts).tocsr()
        indices = torch.as_tensor(x.indices, dtype=torch.long)
        offsets = torch.as_tensor(x.indptr[:-1], dtype=torch.long)
        weights = torch.as_tensor(x.data, dtype=torch.float32)
        return self.out(self.bag(indices, offsets, per_sample_weights=weights) + self.bias)


class MLPRouter(TrainedRouter):
    kind = "mlp"

    def __init__(self, experts: list[str], expected_costs: np.ndarray, config: dict[str, Any], model: BowMLP):
        super().__init__(experts, expected_costs, config)
        self.model = model.eval()

    def scores(self, texts: list[str]) -> np.ndarray:
        return predict_proba(self.model, list(texts))

    def save_weights(self, folder: Path) -> None:
        (folder / "vectorizer.pkl").write_bytes(pickle.dumps(self.model.vectorizer))
        state = {k: v for k, v in self.model.state_dict().items()}
        torch.save(state, folder / "mlp.pt")

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> MLPRouter:
        vectorizer = pickle.loads((folder / "vectorizer.pkl").read_bytes())
        model = build_model(vectorizer, len(experts), config)
        model.load_state_dict(torch.load(folder / "mlp.pt"))
        return cls(experts, expected_costs, config, model)


def build_model(vectorizer: TfidfVectorizer, n_experts: int, config: dict[str, Any]) -> BowMLP:
    torch.manual_seed(config.get("seed", 0))
    return BowMLP(vectorizer, n_experts, config["hidden"], config["dropout"])


def fit(
    texts: list[str],
    targets: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> MLPRouter:
    """Train locally (no Ray): vectorizer on ``texts``, then the MLP on the soft ``targets``."""
    config = {**DEFAULTS, **config}
    model = build_model(fit_vectorizer(texts, config["max_features"]), len(experts), config)
    return MLPRouter(experts, expected_costs, config, fit_epochs(model, texts, targets, config))
