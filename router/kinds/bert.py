"""BERT-Router: a BERT-family encoder (default all-MiniLM-L6-v2) + a linear head, fine-tuned end to
end with cross-entropy on the soft labels (torch). A saved router scores on ONNX Runtime by default
(``backend: onnx``, ``quantize: int8`` optional): pooled encoder states -> the head in numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from router.encoder import Encoder, load_encoder
from router.kinds import Kind, NeuralSettings
from router.kinds._embedding import EncoderSettings
from router.onnx_encoder import bundle_beside
from router.trained import ONNX_FOLDER, RoutingModel, bundled_onnx


class BertSettings(EncoderSettings, NeuralSettings):
    max_length: int = Field(128, ge=8, description="Tokens of a query the encoder reads.")
    epochs: int = Field(2, ge=1)
    lr: float = Field(3e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    device: str = Field(
        "auto", description="Training only: the GPU where torch sees one; a saved router scores on the CPU."
    )


GRID = {"epochs": [1, 2, 4]}
"""What nested cross-validation chooses among (``--inner-folds 0`` keeps the defaults: ~8x cheaper)."""


class BertRouter(RoutingModel):
    """Scores = softmax(head(pooled encoder states)); the encoder runs in torch or ONNX Runtime."""

    kind = "bert"

    def __init__(
        self,
        experts: list[str],
        expected_costs: np.ndarray,
        config: BertSettings,
        encode: Encoder,
        head: tuple[np.ndarray, np.ndarray],
        model: Any = None,
    ):
        super().__init__(experts, expected_costs, config)
        self.encode, self.model = encode, model  # model: the torch EncoderClassifier, if trained here
        self.weight, self.bias = (np.asarray(a, dtype=np.float32) for a in head)

    @classmethod
    def from_model(
        cls, experts: list[str], expected_costs: np.ndarray, config: BertSettings, model: Any
    ) -> BertRouter:
        """A router over a freshly trained ``EncoderClassifier`` (scores in torch until saved and loaded)."""
        import torch

        model.eval()

        @torch.inference_mode()
        def encode(texts: list[str]) -> np.ndarray:
            return np.concatenate(
                [model.pooled(texts[s : s + 64]).cpu().numpy() for s in range(0, len(texts), 64)]
            )

        head = (model.head.weight.detach().cpu().numpy(), model.head.bias.detach().cpu().numpy())
        return cls(experts, expected_costs, config, _length_sorted(encode), head, model=model)

    def scores(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.experts)), dtype=np.float32)
        logits = self.encode(list(texts)) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def save_weights(self, folder: Path) -> None:
        if self.model is None:
            raise ValueError("a BERT router loaded for inference has no trainable model to save")
        self.model.encoder.save_pretrained(folder / "encoder")
        self.model.tokenizer.save_pretrained(folder / "encoder")
        np.savez(folder / "head.npz", weight=self.weight, bias=self.bias)

    @classmethod
    def encoder_source(cls, folder: Path, config: BertSettings) -> str:
        return str(folder / "encoder")

    @classmethod
    def load_weights(
        cls, folder: Path, experts: list[str], expected_costs: np.ndarray, config: BertSettings
    ) -> BertRouter:
        source = str(folder / "encoder")
        if config.backend == "onnx":  # the artifact's own bundle, exported into it on first use
            source = bundled_onnx(folder) or str(bundle_beside(source, folder / ONNX_FOLDER))
        encode = load_encoder(source, config.max_length, config.backend, config.quantize)
        return cls(experts, expected_costs, config, encode, load_head(folder))


def load_head(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The linear head: ``head.npz``, or ``head.pt`` of artifacts saved before (needs torch)."""
    if (folder / "head.npz").exists():
        data = np.load(folder / "head.npz")
        return data["weight"], data["bias"]
    import torch

    state = torch.load(folder / "head.pt")
    return state["weight"].numpy(), state["bias"].numpy()


def _length_sorted(encode: Encoder) -> Encoder:
    """Run ``encode`` on texts sorted by length (less padding), results in the input order."""

    def run(texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = encode([texts[i] for i in order])
        result = np.empty_like(out)
        result[order] = out
        return result

    return run


def prepare(texts: list[str], config: BertSettings) -> dict[str, Any]:
    return {}


def build_model(n_experts: int, config: BertSettings) -> Any:
    """A fresh ``EncoderClassifier`` (torch)."""
    import torch

    from router.bert_model import EncoderClassifier

    torch.manual_seed(config.seed)
    return EncoderClassifier(config.encoder, n_experts, config.max_length)


KIND = Kind(
    "bert", BertSettings, BertRouter, None, "soft_labels", GRID, prepare, build_model, BertRouter.from_model
)
