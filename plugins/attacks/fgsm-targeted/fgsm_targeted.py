"""Targeted FGSM: one gradient step towards the target class (Kurakin et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl


class TargetedFGSM(Attack):
    r"""Fast Gradient Sign Method towards a target: a single step of size eps *down* the loss of the target class.

    .. math:: x' = \mathrm{clip}_{[0,1]}(x - \epsilon\,\mathrm{sign}(\nabla_x L(f(x), t)))   (linf)
    .. math:: x' = \mathrm{clip}_{[0,1]}(x - \epsilon\, g / \|g\|_2),\ g = \nabla_x L(f(x), t)   (l2)

    ``t`` is ``budget.targets``, one target label per sample chosen by the arena; ``L`` is the cross-entropy on
    the logits of ``target.model``. A zero gradient leaves the sample unchanged under l2.

    Papers: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
    https://arxiv.org/abs/1412.6572 (FGSM); Kurakin, Goodfellow and Bengio, "Adversarial Machine Learning at
    Scale", ICLR 2017, https://arxiv.org/abs/1611.01236 (the targeted step).

    Arguments: none; ``eps``, the norm and the targets come from the budget.

    Usage::

        x_adv = TargetedFGSM().run(target, x, y, budget)   # budget.targets holds the target labels
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = True

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """One gradient step from ``x`` towards ``budget.targets``, clipped to [0, 1]."""
        if budget.targets is None:
            raise ValueError("fgsm-targeted is a targeted attack: budget.targets must hold one label per sample")
        model = target.model.eval()
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(model(x_in), budget.targets, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)
        if budget.norm == "linf":
            step = grad.sign_()
        else:
            step = grad.div_(grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1))))
        return (x - budget.eps * step).clamp_(0.0, 1.0)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """Targeted FGSM, the only attack of this plugin."""
    return [TargetedFGSM]
