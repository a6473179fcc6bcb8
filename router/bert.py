"""BERT-Router: a BERT-family encoder (default all-MiniLM-L6-v2) + a linear head, fine-tuned end to
end with cross-entropy on the soft labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from router.encoder import DEFAULT_ENCODER, resolve_encoder
from router.neural import fit_epochs, predict_proba
from router.trained import TrainedRouter

DEFAULTS = {
    "encoder": DEFAULT_ENCODER,
    "max_length": 128,
    "epochs": 2,
    "lr": 3e-5,
    "batch_size": 32,
    "seed": 0,
    "quantize": None,
}


class EncoderClassifier(torch.nn.Module):
    """texts -> tokenizer -> encoder -> mean pooling -> linear head -> logits."""

    def __init__(self, encoder: str, n_experts: int, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # mean pooling instead; unused weights would stall DDP
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_experts)
        self.max_length = max_length

    def forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        hidden = self.encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


class BertRouter(TrainedRouter):
    kind = "bert"

    def __init__(
        self, experts: list[str], expected_costs: np.ndarray, config: dict[str, Any], model: EncoderClassifier
    ):
        super().__init__(experts, expected_costs, config)
        self.model = model.eval()
        self.scorer = quantized(self.model) if config.get("quantize") == "int8" else self.model

    def scores(self, texts: list[str]) -> np.ndarray:
        """Batches of similar length (by characters), so little compute goes to padding."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        probs = predict_proba(self.scorer, [texts[i] for i in order], batch_size=64)
        out = np.empty_like(probs)
        out[order] = probs
        return out

    def save_weights(self, folder: Path) -> None:
        self.model.encoder.save_pretrained(folder / "encoder")
        self.model.tokenizer.save_pretrained(folder / "encoder")
        torch.save(self.model.head.state_dict(), folder / "head.pt")

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: dict
    ) -> BertRouter:
        model = EncoderClassifier(str(folder / "encoder"), len(experts), config["max_length"])
        model.head.load_state_dict(torch.load(folder / "head.pt"))
        return cls(experts, expected_costs, config, model)


def quantized(model: EncoderClassifier) -> torch.nn.Module:
    """A copy with int8 dynamic quantization of the linear layers (CPU inference; about 2x faster)."""
    import copy
    import warnings

    with warnings.catch_warnings():  # torch points at torchao for new code; this API still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )


def build_model(n_experts: int, config: dict[str, Any]) -> EncoderClassifier:
    torch.manual_seed(config.get("seed", 0))
    return EncoderClassifier(config["encoder"], n_experts, config["max_length"])


def fit(
    texts: list[str],
    targets: np.ndarray,
    experts: list[str],
    expected_costs: np.ndarray,
    config: dict[str, Any],
) -> BertRouter:
    """Fine-tune locally (no Ray)."""
    config = {**DEFAULTS, **config}
    model = fit_epochs(build_model(len(experts), config), texts, targets, config)
    return BertRouter(experts, expected_costs, config, model)
