"""Robustness curves: robust accuracy as a function of the budget, read off the per-sample records.

The referee stores, per sample, whether it survived and the norms of its perturbation. A sample that an
attack broke with a perturbation of norm ``r`` is broken for every budget ``>= r``; one it did not break
(or broke only beyond a smaller budget) holds. So one match gives its curve from 0 to the track's eps for
free, and a defense's worst case over attacks is the per-sample conjunction of its matches' curves. An
attack that always spends the whole budget (FGSM, a fixed step) gives a step at eps, not a curve: only
minimal-perturbation attacks (CW, DeepFool) or early-stopping ones trace the slope.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from arena.rules.referee import TOLERANCE

#: budgets of a curve, evenly spaced from 0 to the track's eps
POINTS = 11


def robustness_curve(
    matches: Sequence[dict[str, np.ndarray]], norm: str, eps: float, points: int = POINTS
) -> list[dict[str, float]]:
    """``[{"eps": e, "robust_accuracy": a}, ...]`` for ``points`` budgets from 0 to ``eps``.

    ``matches`` holds per-sample records of matches on the same samples (a defense's column of a board):
    a sample holds at a budget when it is clean-correct and holds in every match (the worst case).
    """
    if not matches:
        return []
    clean = np.logical_and.reduce(
        [m["clean_correct"].astype(bool) & ~m["clean_rejected"].astype(bool) for m in matches]
    )
    curve = []
    for budget in np.linspace(0.0, eps, points):  # at eps itself every broken sample is broken, whatever its norm
        held = [m["survived"].astype(bool) | ((m[norm] > budget + TOLERANCE) & (budget < eps)) for m in matches]
        curve.append({"eps": float(budget), "robust_accuracy": float((clean & np.logical_and.reduce(held)).mean())})
    return curve
