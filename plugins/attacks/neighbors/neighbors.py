"""Neighbors: the budget ball's points that leave the nearest public original behind, then a few PGD steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl, neighbor_points


class Neighbors(Attack):
    r"""Start where a lookup of the public originals cannot answer: away from the input's nearest public image.

    With ``o`` the nearest public image of the input's class and ``o'_1 .. o'_k`` the nearest public images of
    other classes (``target.public_data``, and ``target.train_data`` if ``train_split``), the starts are

    .. math:: s_0 = x + \epsilon\, u(x - o), \quad s_{2j-1} = x + \epsilon\, u(o'_j - o), \quad
              s_{2j} = x + \epsilon\, u(o'_j - x) \quad (j = 1..k)

    with ``u = sign`` for linf and ``v / ||v||_2`` for l2 (:func:`arena.neighbor_points`): ``s_0`` is the
    point of the ball farthest from ``o``, ``s_{2j-1}`` the one that most favours ``o'_j`` over ``o`` in L2,
    ``s_{2j}`` the nearest to ``o'_j`` in L-inf; then the first ``k + 1`` kinds again for each sketch side that
    divides the images' side, found among the images average-pooled to that side (a lookup that compares
    small sketches averages a step at full size away; these steps are whole in the sketch). From each
    start, ``steps`` signed (linf) or normalised (l2) gradient steps of size ``rel_step * eps`` up the
    cross-entropy of ``target.model`` (white- and gray-box) or of ``target.substitute`` (black-box), each
    projected onto the ball and the track's grid. Per sample it returns the first point the model misclassifies
    (black-box: the starts and the ends of the steps are sent to ``target.query``, two per start and sample at
    most), else the one with the smallest margin of the true class.

    A defense that answers the label of the nearest public image inside some radius is flat there, so no
    gradient or query leads out of that radius; these starts lie outside it.

    Paper: the starts follow the nearest-neighbour attacks of Wang, Jha and Chaudhuri, "Analyzing the
    Robustness of Nearest Neighbors to Adversarial Examples", ICML 2018, https://arxiv.org/abs/1706.03922;
    the steps are Madry et al.'s PGD, https://arxiv.org/abs/1706.06083.

    Arguments:
        count: public images of other classes to start towards (default 4).
        steps: gradient steps from each start (default 10; 0 keeps the starts).
        rel_step: step size as a fraction of eps (default 0.1).
        train_split: also count the public training split as public originals (default True).
        sketch_sides: sides of the pooled sketches to start from as well, those that divide the images' side
            (default (14, 7, 4): 14, 7 and 4 on 28 x 28 images, 4 on 8 x 8 ones).

    Usage::

        x_adv = Neighbors(count=4, steps=10).run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box", "black-box")
    targeted = False

    def __init__(
        self,
        count: int = 4,
        steps: int = 10,
        rel_step: float = 0.1,
        train_split: bool = True,
        sketch_sides: tuple[int, ...] = (14, 7, 4),
    ) -> None:
        if count < 0 or steps < 0 or rel_step <= 0 or any(side < 1 for side in sketch_sides):
            raise ValueError(
                "count and steps must not be negative, rel_step and sketch_sides must be positive: "
                f"{count, steps, rel_step, sketch_sides}"
            )
        sides = list(sketch_sides)  # as the manifest states it
        super().__init__(count=count, steps=steps, rel_step=rel_step, train_split=train_split, sketch_sides=sides)

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """The starts, their steps, and per sample the point of smallest margin (the first misclassified one)."""
        public_x, public_y = target.public_data
        if self.train_split:
            train_x, train_y = target.train_data
            public_x, public_y = torch.cat([public_x, train_x]), torch.cat([public_y, train_y])
        height, width = x.shape[-2:]
        sides = [side for side in self.sketch_sides if side < min(height, width)]
        factors = tuple(height // side for side in sides if height % side == 0 and width % side == 0)
        starts = neighbor_points(x, y, public_x, public_y, budget, self.count, factors).flatten(0, 1)
        k = len(starts) // len(x)
        rows_x, rows_y = x.repeat_interleave(k, dim=0), y.repeat_interleave(k, dim=0)
        if target.threat != "black-box":
            points, margin = self._climb(target.model.eval(), starts, rows_x, rows_y, budget)
        else:  # steps on the substitute; the starts and the ends of the steps are judged by queries
            ends, _ = self._climb(target.substitute.eval(), starts, rows_x, rows_y, budget)
            points = torch.stack([starts.view(len(x), k, *x.shape[1:]), ends.view(len(x), k, *x.shape[1:])], dim=1)
            k = min(2 * k, target.queries_left // max(len(x), 1))
            if k == 0:
                return ends.view(len(x), -1, *x.shape[1:])[:, 0]
            points = points.flatten(1, 2)[:, :k].flatten(0, 1)
            margin = _margin(target.query(points), y.repeat_interleave(k, dim=0))
        best = margin.view(len(x), k).argmin(dim=1)
        return points.view(len(x), k, *x.shape[1:])[torch.arange(len(x), device=x.device), best]

    def _climb(
        self, model: torch.nn.Module, starts: torch.Tensor, x: torch.Tensor, y: torch.Tensor, budget: Budget
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps up the cross-entropy from ``starts``; per row the first point ``model`` misclassifies (else the
        last) and its margin. The steps accumulate off the grid; the model sees their snapped points."""
        delta, alpha = starts - x, self.rel_step * budget.eps
        kept, margin = starts.clone(), torch.full((len(x),), float("inf"), device=x.device)
        for step in range(self.steps + 1):
            current = budget.snap(x + delta, x).detach()
            with torch.enable_grad():
                current.requires_grad_(step < self.steps)
                logits = model(current)
                found = _margin(logits.detach(), y)
                todo = margin >= 0
                kept[todo], margin[todo] = current.detach()[todo], found[todo]
                if step == self.steps or not bool((margin >= 0).any()):
                    break
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), current)
            delta = _project(delta + alpha * _unit(grad, budget.norm), x, budget)
        return kept, margin


def _margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The true class's score less the best other class's: negative where the sample is misclassified."""
    true = scores.gather(1, y[:, None]).squeeze(1)
    return true - scores.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def _unit(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest step of unit size: the sign for linf, the normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


def _project(delta: torch.Tensor, x: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``delta`` in the eps-ball, ``x + delta`` in [0, 1]."""
    if budget.norm == "linf":
        delta = delta.clamp(-budget.eps, budget.eps)
    else:
        size = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (budget.eps / size).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0) - x


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    return [Neighbors]
