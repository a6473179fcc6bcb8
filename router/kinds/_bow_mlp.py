"""MLP-Router's torch module, which training fits (serving scores its weights in numpy:
``router/kinds/mlp.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


class BowMLP(torch.nn.Module):
    """texts -> TF-IDF (sparse) -> EmbeddingBag (sparse linear) -> ReLU -> dropout -> logits."""

    def __init__(
        self,
        features: Any,
        vocabulary: int,
        n_experts: int,
        hidden: int = 256,
        dropout: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.features = features
        self.memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.bag = torch.nn.EmbeddingBag(vocabulary, hidden, mode="sum")
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.out = torch.nn.Sequential(
            torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_experts)
        )

    def train(self, mode: bool = True) -> BowMLP:
        """Training memoises each query's bag (every epoch sees the same texts); eval drops it."""
        self.memo = (self.memo if self.memo is not None else {}) if mode else None
        return super().train(mode)

    def bags(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EmbeddingBag inputs of ``texts``: indices, offsets, weights (each text analysed once while
        training)."""
        if self.memo is None:
            bags = [self.features.analyse(text) for text in texts]
        else:
            for text in texts:
                if text not in self.memo:
                    self.memo[text] = self.features.analyse(text)
            bags = [self.memo[text] for text in texts]
        lengths = [len(idx) for idx, _ in bags]
        return (
            torch.from_numpy(np.concatenate([idx for idx, _ in bags]) if bags else np.zeros(0, np.int64)),
            torch.as_tensor(np.cumsum([0] + lengths[:-1]) if bags else [], dtype=torch.long),
            torch.from_numpy(np.concatenate([w for _, w in bags]) if bags else np.zeros(0, np.float32)),
        )

    def forward(self, texts: list[str]) -> torch.Tensor:
        indices, offsets, weights = (t.to(self.bias.device) for t in self.bags(texts))
        return self.out(self.bag(indices, offsets, per_sample_weights=weights) + self.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """Its weights as numpy arrays, as ``MLPRouter`` serves them."""
        linear = self.out[2]
        tensors = {
            "bag": self.bag.weight,
            "bias": self.bias,
            "out_weight": linear.weight,
            "out_bias": linear.bias,
        }
        return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()}


STATE_KEYS = {"bag": "bag.weight", "bias": "bias", "out_weight": "out.2.weight", "out_bias": "out.2.bias"}


def saved_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``BowMLP`` state dict saved by torch (MLP artifacts before 2026-12-05)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: state[key].float().numpy() for name, key in STATE_KEYS.items()}
