"""Points of the budget ball chosen from the public originals: what a lookup of them cannot answer.

The held-out split is public, so a defense may carry it and answer the label of the nearest public
image (:data:`Target.public_data`). The game is symmetric: an attack may use the same images. For an
input ``x`` whose nearest public image of its own class is ``o``, :func:`neighbor_points` gives the
points of the ball around ``x`` that leave ``o`` farthest behind (``away``) and that come nearest to
each of the nearest public images ``o'`` of another class, relative to ``o`` (``toward``): for the L2
distance, ``||x' - o||^2 - ||x' - o'||^2 = 2 x' . (o' - o) + const`` is linear in ``x'``, so its largest
value in an L-inf ball lies at ``x + eps * sign(o' - o)`` and in an L2 ball at ``x + eps (o' - o) / ||o' - o||``.
"""

from __future__ import annotations

import torch

from arena.hookspecs import Budget

#: images compared at once (a batch against the whole public set)
CHUNK = 256


def neighbor_points(
    x: torch.Tensor, y: torch.Tensor, public_x: torch.Tensor, public_y: torch.Tensor, budget: Budget, count: int = 4
) -> torch.Tensor:
    """Candidate points of the budget ball per image, shaped (N, count + 1, C, H, W), as the referee keeps them.

    Candidate 0 moves away from the nearest public image of the image's own class ``y``; candidates
    ``1 .. count`` move towards the ``count`` nearest public images of other classes (nearest first),
    relative to that own-class image. An image whose class has no public image moves away from itself.
    """
    flat = x.flatten(1)
    images = public_x.to(flat.device, flat.dtype).flatten(1)
    labels = public_y.to(flat.device)
    own, others = [], []
    for start in range(0, len(flat), CHUNK):
        distance = torch.cdist(flat[start : start + CHUNK], images)
        same = labels[None, :] == y[start : start + CHUNK, None].to(labels.device)
        own.append(distance.masked_fill(~same, float("inf")).argmin(dim=1))
        k = min(count, int((~same).sum(dim=1).min()))
        others.append(distance.masked_fill(same, float("inf")).topk(k, dim=1, largest=False).indices)
    own = torch.cat(own)
    origin = torch.where((labels[own] == y.to(labels.device))[:, None], images[own], flat)
    directions = [flat - origin] + [images[column] - origin for column in torch.cat(others).unbind(dim=1)]
    points = [budget.snap(_step(flat, d, budget).view_as(x), x) for d in directions]
    return torch.stack(points, dim=1)


def _step(flat: torch.Tensor, direction: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``flat`` moved by the whole budget along ``direction`` (its sign for L-inf, its unit vector for L2)."""
    if budget.norm == "linf":
        return flat + budget.eps * direction.sign()
    if budget.norm == "l2":
        return flat + budget.eps * direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"neighbor points are defined for linf and l2 budgets, not {budget.norm!r}")
