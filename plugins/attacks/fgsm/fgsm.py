"""FGSM, the one-step gradient attack of Goodfellow et al. (2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl


class FGSM(Attack):
    r"""Fast Gradient Sign Method: a single step of size eps up the loss of the target's model.

    .. math:: x' = \mathrm{clip}_{[0,1]}(x + \epsilon\,\mathrm{sign}(\nabla_x L(f(x), y)))   (linf)
    .. math:: x' = \mathrm{clip}_{[0,1]}(x + \epsilon\, g / \|g\|_2),\ g = \nabla_x L(f(x), y)   (l2)

    The l2 variant is the fast gradient method; a zero gradient leaves the sample unchanged.
    ``L`` is the cross-entropy on the logits of ``target.model`` (the defense in white-box, its twin
    in gray-box).

    Paper: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples",
    ICLR 2015, https://arxiv.org/abs/1412.6572

    Arguments: none; ``eps`` and the norm come from the budget.

    Usage::

        x_adv = FGSM().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """One gradient step from ``x``, clipped to [0, 1]."""
        model = target.model.eval()
        x = x.detach()
        with torch.enable_grad():
            x_in = x.clone().requires_grad_(True)  # a copy: the gradient of a view would go through the view
            loss = F.cross_entropy(model(x_in), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)
        if budget.norm == "linf":
            step = grad.sign_()
        else:
            step = grad.div_(grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1))))
        return step.mul_(budget.eps).add_(x).clamp_(0.0, 1.0)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """FGSM, the only attack of this plugin."""
    return [FGSM]
