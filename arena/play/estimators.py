"""Ways through gradients that lie, for any attack: gradient estimates without backpropagation, and EOT.

A defense can hide its gradient (a quantisation without a straight-through stand-in, a saturated softmax,
a non-differentiable purifier) or draw at random at every pass. Both fool gradient attacks without making
the model robust. These estimates need only forward passes of the model the attack holds (they count no
query) and no knowledge of the defense's code:

* :func:`spsa_gradient`: Simultaneous Perturbation Stochastic Approximation, the estimate of Uesato et al.
  (2018), "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks" (https://arxiv.org/abs/1802.05666):
  finite differences along random sign vectors, which see through a zero or useless autograd gradient;
* :func:`spsa_descent`: the attack of Uesato et al. built on it, projected descent on the logit margin;
* :func:`expectation`: Expectation over Transformation (Athalye et al., 2018, https://arxiv.org/abs/1802.00420):
  the mean of ``draws`` passes of a randomized model, whose gradient is the mean of their gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from arena.rules.hookspecs import Budget


def spsa_gradient(
    loss: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    generator: torch.Generator,
    samples: int = 32,
    delta: float = 0.01,
    chunk: int = 8,
) -> torch.Tensor:
    r"""An estimate of the gradient of the per-sample ``loss`` at ``x``, from forward passes only.

    .. math:: \hat g(x) = \frac{1}{S} \sum_{s=1}^{S} \frac{L(x + \delta v_s) - L(x - \delta v_s)}{2 \delta}\, v_s,
              \qquad v_s \in \{-1, 1\}^d \text{ uniform}

    ``loss`` maps a batch (k, C, H, W) to k losses; it is evaluated on ``2 * samples`` perturbed copies of
    ``x`` (``chunk`` pairs at a time, to bound memory). Larger ``delta`` smooths over steps such as a
    quantisation; a randomized model draws anew at every evaluation, which averages over its draws too.
    The sign vectors come from ``generator`` (use ``budget.generator``), so the estimate is reproducible.
    """
    total = torch.zeros_like(x)
    view = (-1, *x.shape)
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        signs = torch.randint(0, 2, (k, *x.shape), generator=generator, device=generator.device)
        v = (signs.to(x.device, x.dtype) * 2 - 1).view(view)
        with torch.no_grad():
            points = torch.cat([x[None] + delta * v, x[None] - delta * v]).flatten(0, 1)
            values = loss(points).view(2, k, len(x))
        slopes = (values[0] - values[1]) / (2 * delta)
        total += (slopes.view(k, len(x), *[1] * (x.dim() - 1)) * v).sum(0)
    return total / samples


def expectation(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, draws: int) -> torch.Tensor:
    """The mean of ``draws`` passes of ``model`` on ``x`` (its gradient is the mean of theirs: EOT)."""
    return torch.stack([model(x) for _ in range(draws)]).mean(0)


def spsa_descent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: Budget,
    steps: int = 20,
    samples: int = 64,
    rel_delta: float = 0.5,
    rel_step: float = 0.25,
) -> torch.Tensor:
    r"""Projected descent on the logit margin :math:`z_y - \max_{i \ne y} z_i` with SPSA estimates.

    Each of ``steps`` steps moves by ``rel_step * eps`` along the sign (linf) or the direction (l2) of
    :func:`spsa_gradient` (``samples`` sign vectors, ``delta = rel_delta * eps`` per pixel under linf,
    ``rel_delta * eps / sqrt(d)`` under l2: wide enough to see across a quantisation step), then snaps into
    the budget and onto the grid (``budget.snap``). A sample keeps the first iterate ``model`` misclassifies.
    """
    per_pixel = budget.eps if budget.norm == "linf" else budget.eps / math.sqrt(x[0].numel())
    delta, alpha = rel_delta * per_pixel, rel_step * budget.eps
    x = x.detach()
    x_adv = x.clone()
    todo = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        labels = y[todo]

        def margin(points: torch.Tensor, labels: torch.Tensor = labels) -> torch.Tensor:
            logits = model(points.clamp(0, 1))
            repeated = labels.repeat(len(points) // len(labels))[:, None]
            return logits.gather(1, repeated).squeeze(1) - logits.scatter(1, repeated, -math.inf).amax(dim=1)

        grad = spsa_gradient(margin, x_adv[todo], budget.generator, samples, delta)
        if budget.norm == "linf":
            step = grad.sign()
        else:
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        x_adv[todo] = budget.snap(x_adv[todo] - alpha * step, x[todo])
        with torch.no_grad():
            fooled = model(x_adv[todo]).argmax(dim=1) != labels
        todo = todo[~fooled]
        if len(todo) == 0:
            break
    return x_adv
