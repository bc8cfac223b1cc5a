"""Iterative FGSM, the Basic Iterative Method of Kurakin et al. (2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl, l2_norms


class IFGSM(Attack):
    r"""Basic Iterative Method: FGSM repeated with a small step, clipped to the eps-ball around ``x`` after each.

    .. math:: x^0 = x,\quad x^{t+1} = \mathrm{Clip}_{x,\epsilon}\big(x^t + \alpha\, s(\nabla_x L(f(x^t), y))\big)

    ``s`` is ``sign`` for linf and ``v / ||v||_2`` for l2 (then the clip is the projection onto the l2 ball);
    ``Clip`` also keeps every value in [0, 1]; ``alpha = rel_step * eps``. Unlike PGD it starts at ``x`` itself.
    The defaults follow the paper's rule, ``alpha * steps = 1.25 eps``; its step size ``alpha`` is expressed as a
    fraction of eps so that one manifest fits every track.

    Paper: Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World", ICLR 2017 workshop,
    https://arxiv.org/abs/1607.02533

    Parameters (their values: the [params] of plugin.toml):
        steps: gradient steps.
        rel_step: the step size alpha as a fraction of eps.

    Usage::

        x_adv = IFGSM().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``steps >= 1`` and ``rel_step > 0``."""
        if self.steps < 1 or self.rel_step <= 0:
            raise ValueError(f"steps must be at least 1 and rel_step positive, not {self.steps} and {self.rel_step}")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """``steps`` clipped gradient steps from ``x``."""
        model = target.model.eval()
        x = x.detach()
        alpha = self.rel_step * budget.eps
        lo, hi = -x, 1 - x
        if budget.norm == "linf":
            lo, hi = lo.clamp(min=-budget.eps), hi.clamp(max=budget.eps)
        delta = torch.zeros_like(x)
        for _ in range(self.steps):
            with torch.enable_grad():
                x_in = (x + delta).requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
            if budget.norm == "linf":
                delta.add_(grad.sign_(), alpha=alpha).clamp_(lo, hi)
            else:
                delta.add_(grad.div_(l2_norms(grad).clamp_min_(1e-12)), alpha=alpha)
                delta.mul_((budget.eps / l2_norms(delta).clamp_min(1e-12)).clamp_(max=1.0)).clamp_(lo, hi)
        return (x + delta).clamp_(0.0, 1.0)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """Iterative FGSM, the only attack of this plugin."""
    return [IFGSM]
