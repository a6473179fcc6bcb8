"""The cost/quality knob: trade predicted quality against each expert's price.

An expert's utility for a query is ``score - cost_weight * relative_cost`` where ``score`` is the
router's predicted quality (or probability of being best) and ``relative_cost`` is the expert's
expected cost divided by the most expensive expert's (so 0..1). ``cost_weight`` 0 picks on quality
alone; a large one picks the cheapest expert. :func:`calibrate` finds the weight that sends a target
share of traffic to one expert (RouteLLM's threshold calibration, generalised to N experts).
"""

from __future__ import annotations

import numpy as np


def relative_costs(costs: np.ndarray) -> np.ndarray:
    """Per-expert expected cost scaled to 0..1 by the most expensive expert."""
    costs = np.asarray(costs, dtype=float)
    top = costs.max() if costs.size and costs.max() > 0 else 1.0
    return costs / top


def utilities(scores: np.ndarray, costs: np.ndarray, cost_weight: float) -> np.ndarray:
    """(n, m) utilities from (n, m) scores and (m,) expected costs per expert."""
    return np.asarray(scores, dtype=float) - cost_weight * relative_costs(costs)[None, :]


def choose(scores: np.ndarray, costs: np.ndarray, cost_weight: float = 0.0) -> np.ndarray:
    """Index of the chosen expert per query (ties go to the cheaper expert)."""
    u = utilities(scores, costs, cost_weight)
    # Prefer the cheaper expert on exact ties: subtract a vanishing cost term.
    u = u - 1e-12 * relative_costs(costs)[None, :]
    return np.argmax(u, axis=1)


def calibrate(
    scores: np.ndarray, costs: np.ndarray, expert: int, target_share: float, tol: float = 1e-4
) -> float:
    """The cost weight that sends about ``target_share`` of these queries to expert ``expert``.

    Bisection on the weight (the share of the most expensive expert falls as the weight grows;
    for a cheaper expert it rises). Returns the weight whose share is closest to the target.
    """
    if not 0.0 <= target_share <= 1.0:
        raise ValueError("target_share must lie in [0, 1]")

    def share(weight: float) -> float:
        return float(np.mean(choose(scores, costs, weight) == expert))

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
