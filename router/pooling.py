"""Pooling of encoder token states into one vector per text (torch side: training, export, the
torch inference backend). The ONNX graphs are exported from :class:`Pooled`."""

from __future__ import annotations

import numpy as np
import torch

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(batch, seq, d) token states -> (batch, d): the mean over real tokens, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Pooled(torch.nn.Module):
    """An HF encoder followed by :func:`pool`: ``(input_ids, attention_mask) -> (batch, d)``."""

    def __init__(self, encoder: torch.nn.Module, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        self.encoder, self.pooling = encoder, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


class TorchEncoder:
    """texts -> pooled states (n, d) with torch (the reference the ONNX backend is checked against)."""

    def __init__(self, source: str, max_length: int, pooling: str = "mean", batch_size: int = 8):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = Pooled(AutoModel.from_pretrained(source), pooling).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.encoder.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            out[rows] = self.model(enc["input_ids"], enc["attention_mask"]).numpy()
        return out
