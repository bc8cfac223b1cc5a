"""RAND+FGSM, the single-step attack with a random first step of Tramer et al. (2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl


class RandFGSM(Attack):
    r"""A random signed step, then one FGSM step with what is left of the budget.

    .. math:: x' = x + \alpha\,\mathrm{sign}(\mathcal{N}(0, I)),\quad
              x^{adv} = \mathrm{clip}_{[0,1]}\big(x' + (\epsilon - \alpha)\,\mathrm{sign}(\nabla_{x'} L(f(x'), y))\big)

    ``alpha = rel_alpha * eps`` (the paper's alpha = eps / 2 by default); ``x'`` is clipped to [0, 1] before the
    gradient is taken. Under l2 both signs become unit l2 directions, ``n / ||n||_2`` and ``g / ||g||_2``, so the
    two steps add up to at most eps. The random step escapes the non-smooth vicinity of the data point that
    gradient masking (e.g. by FGSM adversarial training) creates; the noise comes from ``budget.generator``.

    Paper: Tramer, Kurakin, Papernot, Goodfellow, Boneh and McDaniel, "Ensemble Adversarial Training: Attacks and
    Defenses", ICLR 2018, https://arxiv.org/abs/1705.07204 (section 4.1, R+FGSM).

    Parameters (their values: the [params] of plugin.toml):
        rel_alpha: size of the random step as a fraction of eps, in [0, 1).

    Usage::

        x_adv = RandFGSM().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``rel_alpha`` lies in [0, 1)."""
        if not 0 <= self.rel_alpha < 1:
            raise ValueError(f"rel_alpha must lie in [0, 1), not {self.rel_alpha}")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """The random step, then the gradient step from where it landed."""
        model = target.model.eval()
        x = x.detach()
        alpha = self.rel_alpha * budget.eps
        generator = budget.generator
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        with torch.enable_grad():
            x_in = (x + alpha * _direction(noise, budget.norm)).clamp_(0.0, 1.0).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
        return (x_in.detach() + (budget.eps - alpha) * _direction(grad, budget.norm)).clamp_(0.0, 1.0)


def _direction(v: torch.Tensor, norm: str) -> torch.Tensor:
    """``sign(v)`` for linf, ``v / ||v||_2`` per sample for l2 (a zero ``v`` stays zero)."""
    if norm == "linf":
        return v.sign_()
    return v.div_(v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1))))


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """RAND+FGSM, the only attack of this plugin."""
    return [RandFGSM]
