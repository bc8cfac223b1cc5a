"""Robustness curves read off the per-sample norms (issue 12, item 6)."""

from __future__ import annotations

import numpy as np
import pytest

from arena.results.curves import robustness_curve


def records(survived: list[int], linf: list[float], clean: list[int] | None = None) -> dict[str, np.ndarray]:
    n = len(survived)
    return {
        "clean_correct": np.ones(n, bool) if clean is None else np.asarray(clean, bool),
        "clean_rejected": np.zeros(n, bool),
        "survived": np.asarray(survived, bool),
        "linf": np.asarray(linf, float),
    }


def test_a_sample_broken_with_norm_r_is_broken_from_r_up() -> None:
    match = records([1, 0, 0, 0], [0.0, 0.05, 0.1, 0.2])
    curve = robustness_curve([match], "linf", 0.2, points=5)
    assert [p["eps"] for p in curve] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert [p["robust_accuracy"] for p in curve] == [1.0, 0.75, 0.5, 0.5, 0.25]


def test_the_curve_ends_at_the_robust_accuracy_and_never_rises() -> None:
    rng = np.random.default_rng(0)
    survived = rng.random(200) < 0.3
    match = records(list(survived), list(np.where(survived, 0.0, rng.random(200) * 0.3)))
    curve = robustness_curve([match], "linf", 0.3)
    values = [p["robust_accuracy"] for p in curve]
    assert values[-1] == pytest.approx(survived.mean()) and values[0] == 1.0
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_a_defense_curve_is_the_worst_case_over_its_attacks() -> None:
    step = records([0, 0, 1, 1], [0.2, 0.2, 0.0, 0.0])  # FGSM: everything at eps, a step
    minimal = records([1, 0, 0, 1], [0.0, 0.05, 0.1, 0.0], clean=[1, 1, 1, 0])
    curve = robustness_curve([step, minimal], "linf", 0.2, points=3)
    assert [p["robust_accuracy"] for p in curve] == [0.75, 0.25, 0.0]
    assert robustness_curve([], "linf", 0.2) == []
