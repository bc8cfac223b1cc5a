"""The Carlini-Wagner L2 attack (2017), the course's answer to defensive distillation."""

from __future__ import annotations

import math

import torch

from arena import Attack, Budget, Target, hookimpl


class CarliniWagnerL2(Attack):
    r"""Minimise the squared l2 distance plus c times a margin loss, in tanh space; binary-search c per sample.

    .. math:: \min_w\ \|x'(w) - x\|_2^2 + c\, \max\big(Z(x')_y - \max_{i \ne y} Z(x')_i,\ -\kappa\big),\quad
              x'(w) = m + r \tanh(w)

    ``Z`` are the logits of ``target.model``; ``kappa`` (``confidence``) asks for a margin, the knob that defeats
    defensive distillation; ``m`` and ``r`` are the centre and half-width of the box the change of variables keeps
    ``x'`` in: [0, 1], intersected with the eps-ball around ``x`` under linf. Each of ``binary_steps`` rounds runs
    Adam for ``steps`` steps from ``x`` (``abort_early``: stop a round when the loss stopped falling, checked ten
    times a round); then ``c`` is halved towards the largest failing value for samples that succeeded, and raised
    (times 10 until one succeeds, then bisected) for those that failed. The result is, per sample, the adversarial
    example of smallest l2 distance found (misclassified with a margin of at least kappa), or ``x`` if none was;
    each candidate is judged as the referee will see it (``budget.snap``: inside the budget, on the pixel grid),
    since a minimal perturbation can vanish when it is rounded to the data's grey levels.

    Paper: Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017,
    https://arxiv.org/abs/1608.04644

    Parameters (their values: the [params] of plugin.toml):
        confidence: the margin kappa.
        c: the initial trade-off constant.
        binary_steps: rounds of the binary search on c.
        steps: Adam steps per round.
        lr: Adam's learning rate.
        abort_early: end a round once the loss stops falling.

    Usage::

        x_adv = CarliniWagnerL2().run(target, x, y, budget)
    """

    norms = ("l2", "linf")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``confidence >= 0``, ``c > 0``, ``lr > 0``, ``binary_steps >= 1``, ``steps >= 1``."""
        if self.confidence < 0 or self.c <= 0 or self.lr <= 0 or self.binary_steps < 1 or self.steps < 1:
            raise ValueError("cw-l2 needs confidence >= 0, c > 0, lr > 0, binary_steps >= 1 and steps >= 1")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """The binary search on c around Adam in tanh space; the closest adversarial example per sample."""
        model = target.model.eval()
        x = x.detach()
        n = len(x)
        if budget.norm == "linf":
            lo, hi = (x - budget.eps).clamp_(0.0, 1.0), (x + budget.eps).clamp_(0.0, 1.0)
        else:
            lo, hi = torch.zeros_like(x), torch.ones_like(x)
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        w_start = torch.atanh(((x - centre) / radius.clamp_min(1e-12)).clamp_(-1.0, 1.0).mul_(1 - 1e-6))
        c = torch.full((n,), float(self.c), device=x.device)
        c_low, c_high = torch.zeros_like(c), torch.full_like(c, math.inf)
        best, best_dist = x.clone(), torch.full_like(c, math.inf)
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_steps):
            w = w_start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = math.inf
            for step in range(self.steps):
                with torch.enable_grad():
                    x_adv = torch.tanh(w) * radius + centre
                    dist = (x_adv - x).flatten(1).pow(2).sum(dim=1)
                    logits = model(x_adv)
                    real = logits.gather(1, y[:, None]).squeeze(1)
                    other = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
                    loss = (dist + c * (real - other).clamp(min=-self.confidence)).sum()
                    (w.grad,) = torch.autograd.grad(loss, w)
                optimizer.step()
                with torch.no_grad():
                    adversarial = self._adversarial(real, other)
                    # a candidate is judged as the referee will see it: inside the budget, on the pixel grid
                    index = (adversarial & (dist.detach() < best_dist)).nonzero().squeeze(1)
                    if len(index):
                        snapped = budget.snap(x_adv[index].detach(), x[index])
                        logits = model(snapped)
                        real = logits.gather(1, y[index, None]).squeeze(1)
                        other = logits.scatter(1, y[index, None], -math.inf).amax(dim=1)
                        snapped_dist = (snapped - x[index]).flatten(1).pow(2).sum(dim=1)
                        closer = self._adversarial(real, other) & (snapped_dist < best_dist[index])
                        best_dist[index[closer]] = snapped_dist[closer]
                        best[index[closer]] = snapped[closer]
                    succeeded |= adversarial
                if self.abort_early and step % check_every == 0:
                    value = loss.item()
                    if value > previous * 0.9999:
                        break
                    previous = value
            c_high = torch.where(succeeded, torch.minimum(c_high, c), c_high)
            c_low = torch.where(succeeded, c_low, torch.maximum(c_low, c))
            c = torch.where(c_high < math.inf, (c_low + c_high) / 2, c * 10)
        return best

    def _adversarial(self, real: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Misclassified with a margin of at least kappa (any margin when kappa is 0)."""
        return other - real > self.confidence if self.confidence else other > real


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """Carlini-Wagner L2, the only attack of this plugin."""
    return [CarliniWagnerL2]
