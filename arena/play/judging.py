"""Judging a match: what the defense answers for the clean and the adversarial images, in mixed batches.

Two fresh hosts judge a match's images (:func:`judged`), each a secret mix of clean and adversarial images that
never holds two versions of one image; the clean verdict of the images alone (:func:`_reference`, once per trained
model and worker process) serves the board's diagnostics: the input gradient, and whether an answer changed
with its company.
"""

from __future__ import annotations

import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from arena.play import hosts
from arena.play.hosts import Timings
from arena.play.lru import LRU
from arena.play.matchspec import MatchSpec, host_of
from arena.rules import physical, referee
from arena.rules.evaluation import EvalSet
from arena.rules.tracks import Track

#: reference clean verdicts, by (model, evaluation set, draws) digests: see :func:`_reference`
Verdicts = LRU[tuple[bytes, bytes, int], tuple[referee.Verdict, dict]]
#: how many a worker keeps (:class:`arena.play.warm.Warm`)
MAX_CLEAN_VERDICTS = 256


def photographed(track: Track, evaluation: EvalSet, images: torch.Tensor) -> torch.Tensor:
    """The images as the defense sees them: as they are, or printed and photographed on a physical track
    (image ``i`` under the evaluation set's secret draw ``i``, clean and adversarial alike)."""
    if track.transform == "none":
        return images
    return physical.photograph(images, evaluation.photo_seed, track.photo_ranges, track.levels)


def judged(
    spec: MatchSpec, clean: torch.Tensor, adversarial: torch.Tensor, draws: int, timings: Timings, verdicts: Verdicts
) -> tuple[referee.Verdict, referee.Verdict, dict]:
    """The defense's verdicts on the clean and the adversarial images, and the board's measures.

    Two fresh hosts judge them at once, each a secret mix: one gets the clean images of a random half of the samples
    and the adversarial images of the other half, the other the rest, each in a random order drawn from the
    operating system's entropy. No host sees two versions of one image, and none sees a batch that is all
    clean or all adversarial: a defense that refuses a suspicious batch refuses clean images with it, and its
    clean accuracy is what these same batches measured. A deterministic defense's verdict on the clean images
    alone (:func:`_reference`) is compared with the mixed one: where they differ, its answer depended on the
    image's company (``company_changes``, a flag on the board). ``timings`` says where the hosts run
    (:func:`arena.play.hosts.device_for`); ``verdicts`` keeps the worker's reference verdicts.
    """
    n, rng = len(clean), np.random.default_rng(secrets.randbits(128))
    order = torch.from_numpy(rng.permutation(n))
    halves = (order[: (n + 1) // 2], order[(n + 1) // 2 :])
    mixes = [(own, other, torch.from_numpy(rng.permutation(n))) for own, other in (halves, halves[::-1])]
    host = host_of(spec, timings)

    def judge(own: torch.Tensor, other: torch.Tensor, shuffle: torch.Tensor) -> referee.Verdict:
        return hosts.classify(host, torch.cat([clean[own], adversarial[other]])[shuffle], draws)[0]

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="arena-judging") as pool:  # two hosts at once
        answers = list(pool.map(lambda mix: judge(*mix), mixes))
    preds = torch.zeros(2, draws, n, dtype=torch.long)  # [clean, adversarial]
    rejected = torch.zeros(2, draws, n, dtype=torch.bool)
    for (own, other, shuffle), verdict in zip(mixes, answers, strict=True):
        unshuffled = torch.empty_like(shuffle)
        unshuffled[shuffle] = torch.arange(n)
        got_preds, got_rejected = verdict.preds[:, unshuffled], verdict.rejected[:, unshuffled]
        for side, positions, part in ((0, own, slice(0, len(own))), (1, other, slice(len(own), None))):
            preds[side][:, positions], rejected[side][:, positions] = got_preds[:, part], got_rejected[:, part]
    mixed = referee.Verdict(preds[0], rejected[0]), referee.Verdict(preds[1], rejected[1])
    measured = _reference_measures(spec, clean, draws, mixed[0], _reference(spec, clean, draws, timings, verdicts))
    return *mixed, measured


def _reference_measures(
    spec: MatchSpec, clean: torch.Tensor, draws: int, mixed: referee.Verdict, alone: tuple[referee.Verdict, dict]
) -> dict:
    """The board's measures of the clean verdict (``alone``: :func:`_reference`'s): the input gradient (white-box
    matches), how often a randomized defense's draws disagree, and how many clean answers changed with their company."""
    reference, measured = alone
    if spec.threat != "white-box":
        measured.pop("input_gradient", None)
    if spec.randomized:
        measured["clean_disagreement"] = float((mixed.preds != mixed.preds[:1]).any(dim=0).float().mean())
    else:
        changed = (reference.preds[0] != mixed.preds[0]) | (reference.rejected[0] != mixed.rejected[0])
        measured["company_changes"] = float(changed.float().mean())
    return measured


def _reference(
    spec: MatchSpec, clean: torch.Tensor, draws: int, timings: Timings, verdicts: Verdicts
) -> tuple[referee.Verdict, dict]:
    """The defense's verdict on the clean images alone, in a fresh host, with the input gradient measured.

    It is the same in every match of a trained model and evaluation set, so it is computed once per
    worker (``verdicts``): the referee judges on mixed batches (:func:`judged`), this one serves the diagnostics only.
    """
    key = (hashlib.sha256(spec.defense_artifact).digest(), hashlib.sha256(spec.evaluation).digest(), draws)
    verdict, measured = verdicts.remember(key, lambda: hosts.classify(host_of(spec, timings), clean, draws, probe=True))
    return verdict, {k: v for k, v in measured.items() if k != "clean_disagreement"}
