"""MLP-Router: bag-of-words (scikit-learn TF-IDF fitted on the training queries) -> MLP (torch).

The first layer is an ``EmbeddingBag`` over the non-zero TF-IDF features, i.e. a sparse linear
layer: a query costs a few dozen weight rows, not a dense matmul over the whole vocabulary.
The features are the fitted vectorizer's own (its analyzer, vocabulary and idf), computed straight
into the bag's index/weight arrays: the same numbers as ``vectorizer.transform`` without building
a scipy matrix, which is most of the cost of routing one query.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from sklearn.feature_extraction.text import TfidfVectorizer

from router.kinds import Kind, NeuralSettings
from router.kinds._tfidf import fit_vectorizer
from router.trained import TrainedRouter


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
    """A fitted (sublinear-tf, l2) ``TfidfVectorizer`` as EmbeddingBag inputs: indices, offsets, weights."""

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

    def __call__(
        self, texts: list[str], memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The bags of ``texts``; with ``memo``, each distinct text is analysed once across calls."""
        if memo is None:
            bags = [self.analyse(text) for text in texts]
        else:
            for text in texts:
                if text not in memo:
                    memo[text] = self.analyse(text)
            bags = [memo[text] for text in texts]
        lengths = [len(idx) for idx, _ in bags]
        return (
            torch.from_numpy(np.concatenate([idx for idx, _ in bags]) if bags else np.zeros(0, np.int64)),
            torch.as_tensor(np.cumsum([0] + lengths[:-1]) if bags else [], dtype=torch.long),
            torch.from_numpy(np.concatenate([w for _, w in bags]) if bags else np.zeros(0, np.float32)),
        )


class BowMLP(torch.nn.Module):
    """texts -> TF-IDF (sparse) -> EmbeddingBag (sparse linear) -> ReLU -> dropout -> logits."""

    def __init__(self, vectorizer: TfidfVectorizer, n_experts: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.vectorizer = vectorizer
        self.features = TfidfBags(vectorizer)
        self.memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.bag = torch.nn.EmbeddingBag(len(vectorizer.vocabulary_), hidden, mode="sum")
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.out = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_experts)
        )

    def train(self, mode: bool = True) -> BowMLP:
        """Training memoises each query's bag (every epoch sees the same texts); eval drops it."""
        self.memo = (self.memo if self.memo is not None else {}) if mode else None
        return super().train(mode)

    def forward(self, texts: list[str]) -> torch.Tensor:
        indices, offsets, weights = (t.to(self.bias.device) for t in self.features(texts, self.memo))
        return self.out(self.bag(indices, offsets, per_sample_weights=weights) + self.bias)


class MLPRouter(TrainedRouter):
    kind = "mlp"
    # ~0.16 ms a decision: inline it holds the loop ~1% of the time at 60 requests/s, while the
    # worker-thread hop would add ~0.05 ms to each (both measured): decide inline.
    blocking = False

    def __init__(self, experts: list[str], expected_costs: np.ndarray, config: MLPSettings, model: BowMLP):
        super().__init__(experts, expected_costs, config)
        self.model = model.eval()

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> np.ndarray:
        self.model.eval()
        texts = list(texts)
        out = [torch.softmax(self.model(texts[s : s + 256]), dim=-1) for s in range(0, len(texts), 256)]
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, len(self.experts)))

    def save_weights(self, folder: Path) -> None:
        (folder / "vectorizer.pkl").write_bytes(pickle.dumps(self.model.vectorizer))
        state = {k: v for k, v in self.model.state_dict().items()}
        torch.save(state, folder / "mlp.pt")

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: MLPSettings
    ) -> MLPRouter:
        vectorizer = pickle.loads((folder / "vectorizer.pkl").read_bytes())
        model = build_model(len(experts), config, vectorizer)
        model.load_state_dict(torch.load(folder / "mlp.pt"))
        return cls(experts, expected_costs, config, model)


def build_model(n_experts: int, config: MLPSettings, vectorizer: TfidfVectorizer) -> BowMLP:
    torch.manual_seed(config.seed)
    return BowMLP(vectorizer, n_experts, config.hidden, config.dropout)


def prepare(texts: list[str], config: MLPSettings) -> dict[str, Any]:
    """The vocabulary, fitted once on the driver and shipped to every training worker."""
    return {"vectorizer": fit_vectorizer(texts, config.max_features)}


def from_model(
    experts: list[str], expected_costs: np.ndarray, config: MLPSettings, model: BowMLP, **_: Any
) -> MLPRouter:
    return MLPRouter(experts, expected_costs, config, model)


KIND = Kind("mlp", MLPSettings, MLPRouter, None, "soft_labels", GRID, prepare, build_model, from_model)
