"""The secret distortion's family: small warps and noise that move an image off its published original.

A ``transformed`` track (see :mod:`arena.rules.evaluation`) evaluates its held-out images under draws of this
family made from the arena's secret; :meth:`arena.TrainContext.augment` gives a defense fresh, public draws
of the same family to train on. Only the draws are secret, never the family: a model that has seen such
warps in training keeps its accuracy on the evaluation images, a lookup table of the public split does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arena.rules.referee import quantize


@dataclass(frozen=True)
class Distortion:
    """How far a secret distortion moves an image (sizes are fractions of the image's side)."""

    rotate: float
    scale: float
    shift: float
    elastic: float
    noise: float
    grid: int = 3
    resample: str = "bilinear"  # or "nearest": no new grey levels, edges stay as crisp as the data's


#: draws of a distortion per image at most (see :func:`distort`), and how far (L-inf) each image moves at least
#: from its public original (an L-inf track's eps if larger): a lookup within the budget finds no original
ATTEMPTS = 6
MIN_MOVE = 0.2

#: the distortion of ``transformed`` tracks per data set (measured with bench/evaluation_cost.py and
#: bench/defense_eval.py: see docs/evaluation.md). MNIST resamples to the nearest pixel: interpolated edges
#: are grey values that adversarially trained models find fragile (PGD training kept 0.52 of 0.75 robust
#: accuracy with bilinear resampling, 0.71 with nearest). Digits' 8 x 8 pixels are interpolated: to the
#: nearest pixel, PGD training kept more robust accuracy (0.32 instead of 0.26 of 0.51) but less clean
#: accuracy (0.88 instead of 0.93, below the track's floor of 0.90): bench/distortion_choice.py.
DISTORTIONS: dict[str, Distortion] = {
    "digits": Distortion(rotate=3.0, scale=0.02, shift=0.02, elastic=0.01, noise=0.02),
    "mnist": Distortion(rotate=3.0, scale=0.02, shift=0.02, elastic=0.01, noise=0.02, resample="nearest"),
}


def min_move(norm: str, eps: float) -> float:
    """How far (L-inf) every distorted image lies from its original: :data:`MIN_MOVE`, or an L-inf eps if larger."""
    return max(MIN_MOVE, eps if norm == "linf" else 0.0)


def distort(
    x: torch.Tensor, generator: torch.Generator, how: Distortion, chosen: torch.Tensor, levels: int, away: float
) -> torch.Tensor:
    """Images ``x[chosen]`` under random distortions drawn from ``generator``, on the grid of ``levels``.

    Each image moves by more than ``away`` (L-inf) from its original: an image the first draw leaves
    nearer is drawn again, up to :data:`ATTEMPTS` times, each draw 1.5 times stronger. The draws are
    made for every image of ``x`` in order, so an image's distortion depends on the generator's seed
    and its position only, not on which others are chosen.
    """
    n, device, chosen = len(x), x.device, chosen.cpu()
    uniform = (2 * torch.rand(n, ATTEMPTS, 4, generator=generator) - 1)[chosen].to(device)
    field = torch.randn(n, ATTEMPTS, 2, how.grid, how.grid, generator=generator)[chosen].to(device)
    noise = torch.randn(x.shape, generator=generator)[chosen].to(device) * how.noise
    images = x[chosen.to(device)]
    result = torch.zeros_like(images)
    todo = torch.ones(len(images), dtype=torch.bool, device=device)
    for attempt in range(ATTEMPTS):
        strength = 1.5**attempt
        warped = _warp(images, uniform[:, attempt] * strength, field[:, attempt] * strength, how)
        candidate = quantize(warped + noise, levels)
        result[todo] = candidate[todo]
        todo &= (candidate - images).flatten(1).abs().amax(dim=1) <= away
    return result


def _warp(images: torch.Tensor, uniform: torch.Tensor, field: torch.Tensor, how: Distortion) -> torch.Tensor:
    """An affine warp (from ``uniform`` draws in [-1, 1]) and an elastic one (from the ``field`` lattice)."""
    angle = uniform[:, 0] * math.radians(how.rotate)
    scale = 1 + uniform[:, 1] * how.scale
    shift = uniform[:, 2:] * how.shift * 2  # affine_grid's coordinates span 2 across the image
    theta = torch.stack(
        [
            torch.stack([angle.cos() / scale, -angle.sin() / scale, shift[:, 0]], dim=1),
            torch.stack([angle.sin() / scale, angle.cos() / scale, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    size = images.shape[-2:]
    elastic = F.interpolate(field * how.elastic * 2, size=size, mode="bicubic", align_corners=True)
    grid = grid + elastic.permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode=how.resample, padding_mode="zeros", align_corners=False)
