"""The overload tier: a per-query stand-in for a slow routing policy, learned online from that
policy's own decisions on the traffic the router really sees.

When a decision would wait too long for the policy's worker thread (``ingress.decisions.
max_queue_ms``), the router asks this tier instead: a linear classifier over hashed word 1–2-grams
(about 0.1–0.3 ms a query) that predicts the policy's first choice, trained with scikit-learn's
``SGDClassifier.partial_fit`` on every batch the policy decides, in that worker thread. It answers
once it has learned from ``ready_after`` decisions; before that (or if it fails) the router falls
back to the moving average of the policy's scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import SGDClassifier

from router.policy import Message, RoutingDecision, query_text


class DistilledTier:
    """Scores per expert for one query (the classifier's margins: the policy's likely first choice
    highest). Thread-safe for one learner and any number of readers: each update publishes a copy
    of the weights in one assignment."""

    def __init__(self, experts: Sequence[str], n_features: int = 2**16, ready_after: int = 64):
        self.experts = list(experts)
        self.ready_after = ready_after
        self._vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2"
        )
        self._learner = SGDClassifier(alpha=1e-4, random_state=0)
        self._weights: tuple[np.ndarray, np.ndarray] | None = None
        self.learned = 0
        """Decisions learned from."""

    @property
    def ready(self) -> bool:
        return self._weights is not None and self.learned >= self.ready_after

    def learn(self, texts: Sequence[str], decisions: Sequence[RoutingDecision]) -> None:
        """One pass of SGD over a batch of the policy's decisions (their first choices)."""
        labels = [self.experts.index(d.expert) for d in decisions]
        with warnings.catch_warnings():  # a batch may hold one class only: fine for partial_fit
            warnings.simplefilter("ignore")
            self._learner.partial_fit(
                self._vectorizer.transform(texts), labels, classes=np.arange(len(self.experts))
            )
        coef, intercept = self._learner.coef_, self._learner.intercept_
        if len(self.experts) == 2:  # a binary classifier has one margin: the second expert's
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        self._weights = (coef.T.copy(), intercept.copy())
        self.learned += len(texts)

    def scores(self, messages: Sequence[Message]) -> dict[str, float]:
        """Each expert's score for this conversation (higher is better)."""
        if self._weights is None:
            raise RuntimeError("the fast tier has not learned yet")
        weights, bias = self._weights
        row = self._vectorizer.transform([query_text(messages)]) @ weights + bias
        return dict(zip(self.experts, np.asarray(row).ravel().tolist()))
