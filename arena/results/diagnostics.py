"""Diagnostics of a defense's evaluation: signs that its score measures weak attacks, not robustness.

These are items of Carlini et al. 2019, "On Evaluating Adversarial Robustness" (https://arxiv.org/abs/1902.06705),
and AutoAttack's own flags, computed from what a round already recorded:

* ``vanishing-gradients``: the median input gradient (of the loss at the model's own prediction, on the
  clean samples of its white-box matches) is far below the undefended baseline's on the same track;
* ``black-box-beats-white-box``: an attack without the model breaks more samples than every white-box attack;
* ``single-step-beats-iterative``: FGSM breaks more than the iterative attacks (PGD, BIM, AutoAttack);
* ``minimal-attacks-fail``: the minimal-perturbation attacks (CW, DeepFool), which follow the gradient to the
  nearest boundary, break less than half of what the best attack breaks (an unbounded one should reach all);
* ``unstable-draws``: a randomized defense's draws disagree on many clean samples;
* ``batch-dependent``: a deterministic defense answered clean images otherwise in the referee's mixed batches
  (half clean, half adversarial: :func:`arena.play.judging.judged`) than alone: its verdict depends on the other
  images of the batch, which no real input stream sorts for it.

A flag is no verdict: it says where to look, and the rules page says why (``/rules#diagnostics``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from arena.contract.plugins import BUILTIN_TEAM

#: the built-in undefended baseline, whose input gradients the others are compared with
BASELINE = (BUILTIN_TEAM, "undefended")
#: built-in attacks by kind (plugins of the team ``arena``)
SINGLE_STEP = frozenset({"fgsm", "rand-fgsm"})
ITERATIVE = frozenset({"pgd", "ifgsm", "autoattack"})
MINIMAL = frozenset({"cw-l2", "deepfool"})
#: thresholds: gradient ratio to the baseline, success-rate margin, clean disagreement across draws
VANISHING = 0.01
MARGIN = 0.02
UNSTABLE = 0.05

#: the one-line explanation of each flag (``{}`` is the measured figure)
EXPLANATIONS: dict[str, str] = {
    "vanishing-gradients": "its input gradients are {} of the undefended baseline's: gradient attacks find nothing "
    "to follow (gradient masking, as in defensive distillation); gradient-free attacks (autoattack, spsa) tell more",
    "black-box-beats-white-box": "an attack without the model breaks {} of its samples, more than any white-box "
    "attack: the white-box gradients mislead",
    "single-step-beats-iterative": "one FGSM step breaks {}, more than the iterative attacks: the loss surface "
    "around the samples is masked",
    "minimal-attacks-fail": "CW and DeepFool, which follow the gradient to the nearest boundary, break only {} of "
    "what the best attack breaks: the gradient does not lead to the boundary",
    "unstable-draws": "its draws disagree on {} of the clean samples: randomness that changes the answer is no "
    "robustness, and it is judged over every draw",
    "batch-dependent": "its answers to {} of the clean samples changed with the other images of their batch: a "
    "verdict that depends on its company tells batches apart, not images (the referee judges mixed batches)",
}


@dataclass(frozen=True)
class Played:
    """One ok match of a round, as the diagnostics see it."""

    track: str
    threat: str
    defense: int  # version id
    attack_team: str
    attack: str  # plugin name
    success_rate: float | None
    metrics: dict[str, Any]


def diagnose(matches: Iterable[Played], baseline: Callable[[int], bool]) -> dict[tuple[int, str], list[dict[str, str]]]:
    """Flags per (defense version, track): ``[{"name": ..., "text": ...}]``; ``baseline(id)``: is it the baseline?"""
    by_defense: dict[tuple[int, str], list[Played]] = defaultdict(list)
    for match in matches:
        by_defense[match.defense, match.track].append(match)
    gradients = {key: _median(m.metrics.get("input_gradient") for m in group) for key, group in by_defense.items()}
    reference = {track: gradients[d, track] for d, track in by_defense if baseline(d) and gradients[d, track]}
    flags: dict[tuple[int, str], list[dict[str, str]]] = {}
    for key, group in by_defense.items():
        found: list[tuple[str, float]] = []
        if reference.get(key[1]) and gradients[key] is not None and gradients[key] < VANISHING * reference[key[1]]:
            found.append(("vanishing-gradients", gradients[key] / reference[key[1]]))
        white = _best(m for m in group if m.threat == "white-box")
        black = _best(m for m in group if m.threat == "black-box")
        if black is not None and black > (white or 0.0) + MARGIN:
            found.append(("black-box-beats-white-box", black))
        single = _best(m for m in group if m.threat == "white-box" and _builtin(m, SINGLE_STEP))
        iterative = _best(m for m in group if m.threat == "white-box" and _builtin(m, ITERATIVE))
        if single is not None and iterative is not None and single > iterative + MARGIN:
            found.append(("single-step-beats-iterative", single))
        minimal = _best(m for m in group if m.threat == "white-box" and _builtin(m, MINIMAL))
        best = _best(m for m in group if m.threat == "white-box")
        if minimal is not None and best and minimal < 0.5 * best:
            found.append(("minimal-attacks-fail", minimal / best))
        unstable = max((m.metrics.get("clean_disagreement") or 0.0 for m in group), default=0.0)
        if unstable > UNSTABLE:
            found.append(("unstable-draws", unstable))
        company = max((m.metrics.get("company_changes") or 0.0 for m in group), default=0.0)
        if company > 0:
            found.append(("batch-dependent", company))
        flags[key] = [{"name": name, "text": EXPLANATIONS[name].format(_share(value))} for name, value in found]
    return flags


def _builtin(match: Played, names: frozenset[str]) -> bool:
    return match.attack_team == BUILTIN_TEAM and match.attack in names


def _best(matches: Iterable[Played]) -> float | None:
    rates = [m.success_rate for m in matches if m.success_rate is not None]
    return max(rates) if rates else None


def _median(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


def _share(value: float) -> str:
    return f"{value:.1%}" if value >= 0.001 else f"{value:.1e}"
