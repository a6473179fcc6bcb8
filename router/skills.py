"""The builtin skills model: what a query is about, and how close it is to texts an expert declared.

One artifact folder (``artifacts/skills``, rebuilt by ``expert-router skills``) holds
- a static sentence encoder distilled from all-MiniLM-L6-v2 (``tokenizer.json`` + one int8 vector
  per token, ``vectors.npy`` x ``scales.npy``, weighted by ``idf.npy``; numbers optionally read as
  one): a query's embedding is the normalised
  IDF-weighted mean of its tokens' vectors, ~0.1 ms on one core, no neural network at run time;
- a logistic regression over the five builtin skills (``classifier.npz``), on that embedding and
  optionally hashed word/character n-grams (``skills.json`` says which);
- the calibration of similarity (``skills.json``): the probability that a query is of the kind an
  expert declared, from its cosine to the expert's example queries or to its description.

Everything runs on numpy, ``tokenizers`` and scikit-learn's stateless hashing; no Ray, no torch.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

SKILLS = ("general", "math", "code", "biomedical", "science")
META_FILE = "skills.json"
CENTRE_FILE = "centre.npy"
DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "artifacts" / "skills"
MAX_TOKENS = 256


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
"""Numbers, read as one number (``7``) when the model normalises them: which number is the format,
not the domain."""


class StaticEncoder:
    """Texts -> unit vectors: the IDF-weighted mean of per-token vectors."""

    def __init__(self, tokenizer: Any, vectors: np.ndarray, idf: np.ndarray, normalise_numbers: bool):
        self.tokenizer, self.vectors, self.idf = tokenizer, vectors, idf
        self.normalise_numbers = normalise_numbers
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.special = {self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")} - {None}

    @classmethod
    def load(cls, folder: Path, normalise_numbers: bool) -> StaticEncoder:
        from tokenizers import Tokenizer

        vectors = np.load(folder / "vectors.npy").astype(np.float32)
        if (folder / "scales.npy").exists():  # int8 rows
            vectors *= np.load(folder / "scales.npy")[:, None]
        idf = np.load(folder / "idf.npy").astype(np.float32)
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), vectors, idf, normalise_numbers)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        if self.normalise_numbers:
            texts = [NUMBER.sub("7", t) for t in texts]
        return [[t for t in e.ids if t not in self.special] for e in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.pooled(texts)[0]

    def pooled(self, texts: list[str], with_max: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit vectors: the IDF-weighted mean of each text's token vectors, and, ``with_max``,
        their element-wise maximum (one pass over the tokens)."""
        dims = self.vectors.shape[1]
        mean = np.zeros((len(texts), dims), np.float32)
        top = np.zeros((len(texts), dims), np.float32) if with_max else None
        for i, ids in enumerate(self.token_ids(texts)):
            if ids:
                rows = self.vectors[ids]
                mean[i] = self.idf[ids] @ rows
                if top is not None:
                    top[i] = rows.max(axis=0)
        return _unit(mean), None if top is None else _unit(top)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def hashers(specs: list[dict]) -> list:
    """scikit-learn's stateless n-gram hashers for the model's ``ngrams`` specs."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return [
        HashingVectorizer(
            analyzer=spec["analyzer"],
            ngram_range=tuple(spec["range"]),
            n_features=spec["n_features"],
            alternate_sign=False,
            norm="l2",
        )
        for spec in specs
    ]


class SkillModel:
    """Skill probabilities and calibrated similarities for query texts."""

    def __init__(self, folder: str | Path = DEFAULT_ARTIFACT):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / META_FILE).read_text())
        except FileNotFoundError:
            raise ValueError(
                f"no skills model at {self.folder} (build one with `expert-router skills --out DIR`)"
            ) from None
        self.encoder = StaticEncoder.load(self.folder, bool(self.meta.get("normalise_numbers")))
        weights = np.load(self.folder / "classifier.npz")
        self.coef = weights["coef"].astype(np.float32)
        self.intercept = weights["intercept"].astype(np.float32)
        self.skills: tuple[str, ...] = tuple(self.meta["skills"])
        self.ngrams: list[dict] = self.meta.get("ngrams", [])
        self.max_pooling = bool(self.meta.get("max_pooling"))
        centre = self.folder / CENTRE_FILE
        self.centre = np.load(centre).astype(np.float32) if centre.exists() else None

    def centred(self, embedded: np.ndarray) -> np.ndarray:
        """Embeddings for similarity: minus the training queries' mean embedding, renormalised.
        Mean-pooled static vectors share a large common direction that makes every long text look
        alike (a medical vignette full of numbers as close to "What is 7 + 7?" as a math question)."""
        if self.centre is None:
            return embedded
        shifted = embedded - self.centre
        return shifted / np.maximum(np.linalg.norm(shifted, axis=-1, keepdims=True), 1e-9)

    @cached_property
    def _hashers(self) -> list:
        return hashers(self.ngrams)

    def features(self, texts: list[str]) -> tuple[np.ndarray, list]:
        """The static embeddings (mean-pooled: what similarities compare) and the classifier's
        further feature blocks: max-pooled embeddings and hashed n-gram matrices, where the model
        has them."""
        embedded, top = self.encoder.pooled(texts, self.max_pooling)
        return embedded, [*([top] if top is not None else []), *(h.transform(texts) for h in self._hashers)]

    def skill_probabilities(self, embedded: np.ndarray, blocks: list) -> np.ndarray:
        """(n, skills) probabilities (rows sum to 1) from the embeddings and the further blocks."""
        d = embedded.shape[1]
        logits = embedded @ self.coef[:, :d].T + self.intercept
        start = d
        for matrix in blocks:
            logits += np.asarray(matrix @ self.coef[:, start : start + matrix.shape[1]].T)
            start += matrix.shape[1]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def example_match(self, embedded: np.ndarray, examples: np.ndarray) -> np.ndarray:
        """(n,) probability that each query is of the kind of ``examples`` ((k, d)): the calibrated
        mean cosine to its nearest few examples. Queries and examples both as :meth:`centred` gives
        them (examples centred once, when the policy is built)."""
        if not len(examples):
            return np.zeros(len(embedded), np.float32)
        nearest = min(int(self.meta["examples"]["nearest"]), len(examples))
        cos = embedded @ examples.T
        top = -np.sort(-cos, axis=1)[:, :nearest].mean(axis=1)
        a, b = self.meta["examples"]["calibration"]
        return sigmoid(a * top + b)

    def description_match(self, embedded: np.ndarray, description: np.ndarray) -> np.ndarray:
        """(n,) probability that each query is what a one-line ``description`` ((d,)) says; both as
        :meth:`centred` gives them."""
        a, b = self.meta["description"]["calibration"]
        return sigmoid(a * (embedded @ description) + b)


WARM_QUERIES = "warm_queries.json"


def warm_queries(folder: Path = DEFAULT_ARTIFACT) -> list[str]:
    """Queries of every skill (router_mix train, stratified) that a router replica routes once at
    start: its policy loads everything lazy, the mean of their scores is the overload prior, and
    the fast tier learns from its decisions before the first request."""
    try:
        return list(json.loads((folder / WARM_QUERIES).read_text()))
    except FileNotFoundError:
        return ["warm up"]


_models: dict[Path, SkillModel] = {}


def load_skill_model(folder: str | Path | None = None) -> SkillModel:
    """The skills model in ``folder`` (default: the shipped one), loaded once per process."""
    path = Path(folder).resolve() if folder else DEFAULT_ARTIFACT
    if path not in _models:
        _models[path] = SkillModel(path)
    return _models[path]
