"""Soft labels: per query, a softmax over experts of the quality score divided by a temperature."""

from __future__ import annotations

import numpy as np


def soft_labels(quality: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """(n, m) soft labels from (n, m) quality; rows sum to 1.

    Small temperatures approach one-hot on the best expert; large ones approach uniform.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    z = np.asarray(quality, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
