"""The cost/quality knob: trade predicted quality against each expert's price.

An expert's utility for a query is ``score - cost_weight * relative_cost`` where ``score`` is the
router's predicted quality (or probability of being best) and ``relative_cost`` is the expert's
expected cost divided by the most expensive expert's (so 0..1). ``cost_weight`` 0 picks on quality
alone; a large one picks the cheapest expert. :func:`calibrate` finds the weight that sends a target
share of traffic to one expert (RouteLLM's threshold calibration, generalised to N experts).
"""

from __future__ import annotations

import numpy as np


def relative_costs(costs: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Expected costs, (m,) per expert or (n, m) per query, divided by the most expensive expert's
    expected cost per query in ``reference`` (m,) (default: ``costs`` itself, or its per-expert
    mean). One scale for every query: an expert dear on this kind of query is charged more."""
    costs = np.asarray(costs, dtype=float)
    if not costs.size:
        return costs
    if reference is None:
        reference = costs if costs.ndim == 1 else np.nanmean(costs, axis=0)
    top = float(np.nanmax(reference))
    return costs / (top if top > 0 else 1.0)


def utilities(
    scores: np.ndarray, costs: np.ndarray, cost_weight: float, reference: np.ndarray | None = None
) -> np.ndarray:
    """(n, m) utilities from (n, m) scores and expected costs, (m,) per expert or (n, m) per query
    (``reference``: see :func:`relative_costs`)."""
    return np.asarray(scores, dtype=float) - cost_weight * relative_costs(costs, reference)


def choose(
    scores: np.ndarray, costs: np.ndarray, cost_weight: float = 0.0, reference: np.ndarray | None = None
) -> np.ndarray:
    """Index of the chosen expert per query (ties go to the cheaper expert)."""
    u = utilities(scores, costs, cost_weight, reference)
    # Prefer the cheaper expert on exact ties: subtract a vanishing cost term.
    u = u - 1e-12 * relative_costs(costs, reference)
    return np.argmax(u, axis=1)


def calibrate(
    scores: np.ndarray,
    costs: np.ndarray,
    expert: int,
    target_share: float,
    tol: float = 1e-4,
    reference: np.ndarray | None = None,
) -> float:
    """The cost weight that sends about ``target_share`` of these queries to expert ``expert``.

    Bisection on the weight (the share of the most expensive expert falls as the weight grows;
    for a cheaper expert it rises). Returns the weight whose share is closest to the target.
    """
    if not 0.0 <= target_share <= 1.0:
        raise ValueError("target_share must lie in [0, 1]")

    def share(weight: float) -> float:
        return float(np.mean(choose(scores, costs, weight, reference) == expert))

    lo, hi = 0.0, 1.0
    falling = share(0.0) >= share(1e6)
    while (share(hi) > target_share) == falling and hi < 1e6:
        hi *= 2
    best = min((lo, hi), key=lambda w: abs(share(w) - target_share))
    for _ in range(60):
        mid = (lo + hi) / 2
        s = share(mid)
        if abs(s - target_share) < abs(share(best) - target_share):
            best = mid
        if abs(s - target_share) <= tol or hi - lo < 1e-9:
            break
        if (s > target_share) == falling:
            lo = mid
        else:
            hi = mid
    return best
