"""The bag-of-words features of the text kinds (mlp, pointwise): TF-IDF fitted on the training queries."""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer


def fit_vectorizer(texts: list[str], max_features: int = 30000) -> TfidfVectorizer:
    """TF-IDF over words and word pairs of the training queries (sublinear tf, l2 norm)."""
    vectorizer = TfidfVectorizer(max_features=max_features, ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    return vectorizer.fit(texts)
