"""The BERT-Router's torch model (training and the torch backend): encoder + mean pooling + head."""

from __future__ import annotations

import torch

from router.encoder import resolve_encoder
from router.pooling import pool


class EncoderClassifier(torch.nn.Module):
    """texts -> tokenizer -> encoder -> mean pooling -> linear head -> logits."""

    def __init__(self, encoder: str, n_experts: int, max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # fp32 for training whatever the stored precision (transformers 5 would keep fp16 weights fp16)
        self.encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # mean pooling instead; unused weights would stall DDP
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_experts)
        self.max_length = max_length

    def pooled(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.head.weight.device)
        return pool(self.encoder(**enc).last_hidden_state, enc["attention_mask"])

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.pooled(texts))
