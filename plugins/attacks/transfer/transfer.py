"""Transfer attack: PGD on the arena's substitute model, replayed on the secret defended model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, Budget, Target, hookimpl, l2_norms


class TransferPGD(Attack):
    r"""Projected gradient descent on ``target.substitute``, sent unchanged to the black-box model.

    .. math:: x^{t+1} = \Pi_{B_\epsilon(x) \cap [0,1]^d}\big(x^t + \alpha\, s(\nabla_x L(g(x^t), y))\big),
              \quad x^0 = x + U(B_\epsilon)

    ``g`` is the substitute (an undefended model of another architecture, trained by the arena),
    ``s`` is ``sign`` for linf and ``v / ||v||_2`` for l2, ``alpha = rel_step * eps``. No query is
    spent: the examples rely on transferability alone.

    Papers: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018, https://arxiv.org/abs/1706.06083 (PGD); Papernot et al., "Practical Black-Box Attacks
    against Machine Learning", AsiaCCS 2017, https://arxiv.org/abs/1602.02697 (transfer).

    Parameters (their values: the [params] of plugin.toml):
        steps: gradient steps.
        rel_step: step size as a fraction of eps.
        random_start: start from a uniform point of the eps-ball.

    Usage::

        x_adv = TransferPGD().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("black-box",)
    targeted = False

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """PGD on the substitute from a random start in the eps-ball."""
        model = target.substitute.eval()
        alpha = self.rel_step * budget.eps
        x = x.detach()
        delta = torch.zeros_like(x)
        if self.random_start:
            delta = self._project(x, self._random_start(x, budget), budget)
        for _ in range(self.steps):
            with torch.enable_grad():
                x_in = (x + delta).requires_grad_(True)
                loss = F.cross_entropy(model(x_in), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_in)
            step = grad.sign() if budget.norm == "linf" else grad / l2_norms(grad).clamp_min(1e-12)
            delta = self._project(x, delta + alpha * step, budget)
        return (x + delta).clamp(0.0, 1.0)

    @staticmethod
    def _random_start(x: torch.Tensor, budget: Budget) -> torch.Tensor:
        """A uniform draw from the eps-ball of ``budget.norm``, from ``budget.generator``."""
        generator = budget.generator
        if budget.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
            return ((2 * u - 1) * budget.eps).to(x.device)
        direction = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        u = torch.rand(len(x), generator=generator, device=generator.device, dtype=x.dtype)
        radius = budget.eps * u ** (1.0 / x[0].numel())
        direction = direction / l2_norms(direction).clamp_min(1e-12)
        return (direction * radius.view(-1, *([1] * (x.dim() - 1)))).to(x.device)

    @staticmethod
    def _project(x: torch.Tensor, delta: torch.Tensor, budget: Budget) -> torch.Tensor:
        """Project ``delta`` onto the eps-ball, then keep ``x + delta`` inside [0, 1]."""
        if budget.norm == "linf":
            delta = delta.clamp(-budget.eps, budget.eps)
        else:
            delta = delta * (budget.eps / l2_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0) - x


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """The transfer attack, the only attack of this plugin."""
    return [TransferPGD]
