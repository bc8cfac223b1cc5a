"""Points of the budget ball chosen from the public originals: what a lookup of them cannot answer.

The held-out split is public, so a defense may carry it and answer the label of the nearest public
image (:data:`Target.public_data`). The game is symmetric: an attack may use the same images. For an
input ``x`` whose nearest public image of its own class is ``o``, :func:`neighbor_points` gives the
points of the ball around ``x`` that leave ``o`` farthest behind (``away``) and that come nearest to
each of the nearest public images ``o'`` of another class, relative to ``o`` and straight: for the L2
distance, ``||x' - o||^2 - ||x' - o'||^2 = 2 x' . (o' - o) + const`` is linear in ``x'``, so its largest
value in an L-inf ball lies at ``x + eps * sign(o' - o)`` and in an L2 ball at ``x + eps (o' - o) / ||o' - o||``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from arena.rules.hookspecs import Budget

#: images compared at once (a batch against the whole public set)
CHUNK = 256
#: public images per point among which :func:`breakable` looks for the L-inf-nearest (its L2-nearest)
SHORTLIST = 64


def neighbor_points(
    x: torch.Tensor,
    y: torch.Tensor,
    public_x: torch.Tensor,
    public_y: torch.Tensor,
    budget: Budget,
    count: int = 4,
    sketches: tuple[int, ...] = (),
) -> torch.Tensor:
    """Candidate points of the budget ball per image, shaped (N, K, C, H, W), as the referee keeps them.

    Candidate 0 moves away from the nearest public image ``o`` of the image's own class ``y`` (towards the middle
    grey where a pixel equals ``o``'s); then, for each of the ``count`` nearest public images ``o'`` of other
    classes (nearest first), one candidate moves along ``o' - o`` (the L2 comparison's best) and one comes as
    near to ``o'`` as the ball allows (:func:`_towards`: under L-inf, farthest from ``o`` among those points).
    An image whose class has no public image has ``o = x``. ``K = 2 count + 1``.

    ``sketches`` (pooling factors that divide the images' sides) adds, per factor ``f``, ``count + 1`` candidates
    found the same way among the images average-pooled by ``f`` (a lookup that compares small sketches): one away
    from the sketch of ``o`` and one along each ``o' - o``, each a step whose pooled image is the sketch's best.
    """
    flat = x.flatten(1)
    images = public_x.to(flat.device, flat.dtype).flatten(1)
    labels = public_y.to(flat.device)
    others, origin = _nearest(flat, y, images, labels, count)
    away = _step(flat, _away(flat, origin), budget)
    points = [away]
    for column in others.unbind(dim=1):
        points += [_step(flat, images[column] - origin, budget), _towards(flat, images[column], away, budget)]
    for factor in sketches:
        pool, lift = _sketching(x.shape[1:], factor)
        small, sketch = pool(x), pool(public_x.to(flat.device, flat.dtype))
        others, origin = _nearest(small, y, sketch, labels, count)
        points.append(_step(flat, lift(_away(small, origin)), budget))
        points += [_step(flat, lift(sketch[column] - origin), budget) for column in others.unbind(dim=1)]
    return torch.stack([budget.snap(point.view_as(x), x) for point in points], dim=1)


def _nearest(
    flat: torch.Tensor, y: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flat``: the indices of the ``count`` L2-nearest ``images`` of other classes (nearest first), and
    the nearest of its own class (the row itself where its class has none)."""
    own, others = [], []
    for start in range(0, len(flat), CHUNK):
        distance = torch.cdist(flat[start : start + CHUNK], images)
        same = labels[None, :] == y[start : start + CHUNK, None].to(labels.device)
        own.append(distance.masked_fill(~same, float("inf")).argmin(dim=1))
        k = min(count, int((~same).sum(dim=1).min()))
        others.append(distance.masked_fill(same, float("inf")).topk(k, dim=1, largest=False).indices)
    nearest = torch.cat(own)
    origin = torch.where((labels[nearest] == y.to(labels.device))[:, None], images[nearest], flat)
    return torch.cat(others), origin


def _away(flat: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """The direction away from ``origin``; where a pixel equals it, towards the middle grey (into [0, 1])."""
    return torch.where(flat != origin, flat - origin, 0.5 - flat)


def _sketching(
    shape: torch.Size, factor: int
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """``pool`` (images to flat sketches average-pooled by ``factor``) and ``lift`` (a sketch's direction to the
    full images' direction that moves the sketch along it: each pixel takes its block's value)."""
    channels, height, width = shape
    if factor < 2 or height % factor or width % factor:
        raise ValueError(f"a sketch's factor must be at least 2 and divide the sides {height} x {width}, not {factor}")

    def pool(images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images.reshape(-1, channels, height, width), factor).flatten(1)

    def lift(direction: torch.Tensor) -> torch.Tensor:
        blocks = direction.view(-1, channels, height // factor, width // factor)
        return blocks.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3).flatten(1)

    return pool, lift


def _towards(flat: torch.Tensor, other: torch.Tensor, away: torch.Tensor, budget: Budget) -> torch.Tensor:
    """The point of the ball nearest to ``other``: along ``other - x`` under L2; under L-inf, of the points as
    near to ``other`` as can be (``gap``), the one nearest to ``away`` (farthest from the own-class original)."""
    if budget.norm != "linf":
        return _step(flat, other - flat, budget)
    low, high = flat - budget.eps, flat + budget.eps
    gap = (other.clamp(low, high) - other).abs().amax(dim=1, keepdim=True)
    return torch.maximum(torch.minimum(away, torch.minimum(other + gap, high)), torch.maximum(other - gap, low))


def _step(flat: torch.Tensor, direction: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``flat`` moved by the whole budget along ``direction`` (its sign for L-inf, its unit vector for L2)."""
    if budget.norm == "linf":
        return flat + budget.eps * direction.sign()
    if budget.norm == "l2":
        return flat + budget.eps * direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"neighbor points are defined for linf and l2 budgets, not {budget.norm!r}")


def breakable(
    x: torch.Tensor, y: torch.Tensor, public_x: torch.Tensor, public_y: torch.Tensor, budget: Budget, count: int = 4
) -> torch.Tensor:
    """Per image, whether a point of :func:`neighbor_points` has a nearest public image of another class than
    ``y``, both in L2 and in L-inf (the latter among the point's :data:`SHORTLIST` L2-nearest public images):
    then neither a lookup of the public images of any radius nor a nearest-neighbour answer holds the ball."""
    points = neighbor_points(x, y, public_x, public_y, budget, count)
    k, images = points.shape[1], public_x.to(x.device, x.dtype).flatten(1)
    labels = public_y.to(x.device)
    flat = points.flatten(2).flatten(0, 1)
    label_l2, label_linf = [], []
    for start in range(0, len(flat), CHUNK):
        rows = flat[start : start + CHUNK]
        distance = torch.cdist(rows, images)
        label_l2.append(labels[distance.argmin(dim=1)])
        near = distance.topk(min(SHORTLIST, len(images)), dim=1, largest=False).indices
        linf = (rows[:, None] - images[near]).abs().amax(dim=2)
        label_linf.append(labels[near.gather(1, linf.argmin(dim=1, keepdim=True)).squeeze(1)])
    truth = y.to(x.device)[:, None]
    return (torch.cat(label_l2).view(-1, k) != truth).any(dim=1) & (torch.cat(label_linf).view(-1, k) != truth).any(
        dim=1
    )
