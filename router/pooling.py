"""Pooling of encoder token states into one vector per text, in torch: the BERT-Router's training
model and the ONNX export (the graphs are exported from :class:`Pooled`)."""

from __future__ import annotations

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
