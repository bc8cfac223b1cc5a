"""PGD, the projected gradient descent attack of Madry et al. (2018), with restarts and EOT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arena import Attack, Budget, Target, hookimpl, l2_norms


class PGD(Attack):
    r"""Projected gradient ascent on the cross-entropy, from a random point of the eps-ball.

    .. math:: x^0 = x + U(B_\epsilon),\quad x^{t+1} = \Pi_{B_\epsilon(x) \cap [0,1]^d}\big(x^t + \alpha\,
              s(\bar g^t)\big),\quad \bar g^t = \tfrac{1}{m} \textstyle\sum_{j=1}^{m} \nabla_x L(f_j(x^t), y)

    ``s`` is ``sign`` for linf and ``v / ||v||_2`` for l2, ``alpha = rel_step * eps``, and ``f_1 .. f_m`` are
    ``m = eot`` forward passes of ``target.model``: Expectation over Transformation, for randomized defenses whose
    every pass draws anew (keep ``eot = 1`` for a deterministic model). With ``early_stop`` a sample leaves the batch
    as soon as every pass misclassifies it once rounded onto the pixel grid (``budget.snap``) and keeps that iterate,
    so the attack is never weaker and runs faster;
    it does so in white-box only: against the gray-box twin a sample keeps climbing the loss, which transfers better.
    Each of ``restarts`` runs starts from a fresh random point, for the samples that no earlier run broke.

    Papers: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083 (PGD); Athalye, Carlini and Wagner, "Obfuscated Gradients
    Give a False Sense of Security", ICML 2018, https://arxiv.org/abs/1802.00420 (EOT).

    Parameters (their values: the [params] of plugin.toml):
        steps: gradient steps per run.
        rel_step: step size as a fraction of eps.
        restarts: runs from independent random starts.
        eot: forward passes whose gradients are averaged at every step.
        early_stop: in white-box, stop a sample once it is misclassified.

    Usage::

        x_adv = PGD().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``steps``, ``restarts`` and ``eot`` are at least 1."""
        for name in ("steps", "restarts", "eot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """``restarts`` runs of PGD; each later run attacks only the samples still classified correctly."""
        model = target.model.eval()
        x = x.detach()
        x_adv = x.clone()
        todo = torch.arange(len(x), device=x.device)
        early_stop = self.early_stop and target.threat == "white-box"
        for restart in range(self.restarts):
            x_adv[todo] = self._attack(model, x[todo], y[todo], budget, early_stop)
            if restart + 1 < self.restarts:
                with torch.no_grad():
                    todo = todo[~self._fooled(model, x_adv[todo], y[todo])]
                if len(todo) == 0:
                    break
        return x_adv.clamp_(0.0, 1.0)

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: Budget, early_stop: bool
    ) -> torch.Tensor:
        """One run from a random start; the samples that early stopping removed keep their breaking iterate."""
        alpha = self.rel_step * budget.eps
        lo, hi = _bounds(x, budget)
        delta = _random_start(x, budget).clamp_(lo, hi)
        if budget.norm == "l2":
            delta = _project_l2(delta, budget.eps, lo, hi)
        result = x.clone()
        active = torch.arange(len(x), device=x.device)
        for _ in range(self.steps):
            grad, fooled = self._gradient(model, x + delta, y)
            if early_stop and fooled.any():  # judged as the referee will see it: on the pixel grid
                candidates = fooled.nonzero().squeeze(1)
                snapped = budget.snap(x[candidates] + delta[candidates], x[candidates])
                with torch.no_grad():
                    confirmed = self._fooled(model, snapped, y[candidates])
                fooled = torch.zeros_like(fooled)
                fooled[candidates[confirmed]] = True
                result[active[fooled]] = snapped[confirmed]
                keep = ~fooled
                active, x, y, delta, grad, lo, hi = (t[keep] for t in (active, x, y, delta, grad, lo, hi))
                if len(active) == 0:
                    return result
            if budget.norm == "linf":
                delta.add_(grad.sign_(), alpha=alpha).clamp_(lo, hi)
            else:
                delta = _project_l2(
                    delta.add_(grad.div_(l2_norms(grad).clamp_min_(1e-12)), alpha=alpha), budget.eps, lo, hi
                )
        result[active] = x + delta
        return result

    def _gradient(self, model: nn.Module, x_in: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss gradient averaged over ``eot`` passes, and which samples every pass misclassified."""
        x_in.requires_grad_(True)
        grad: torch.Tensor | None = None
        fooled = torch.ones(len(y), dtype=torch.bool, device=y.device)
        with torch.enable_grad():
            for _ in range(self.eot):
                logits = model(x_in)
                (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_in)
                grad = g if grad is None else grad.add_(g)
                fooled &= logits.detach().argmax(dim=1) != y
        assert grad is not None
        return grad.div_(self.eot), fooled

    def _fooled(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Which samples every one of ``eot`` passes misclassifies."""
        fooled = torch.ones(len(y), dtype=torch.bool, device=y.device)
        for _ in range(self.eot):
            fooled &= model(x).argmax(dim=1) != y
        return fooled


def _bounds(x: torch.Tensor, budget: Budget) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value limits of ``delta``: inside [0, 1] and, for linf, inside [-eps, eps]."""
    if budget.norm == "linf":
        return (-x).clamp_(min=-budget.eps), (1 - x).clamp_(max=budget.eps)
    return -x, 1 - x


def _random_start(x: torch.Tensor, budget: Budget) -> torch.Tensor:
    """A uniform draw from the eps-ball of ``budget.norm``, from ``budget.generator``."""
    generator = budget.generator
    if budget.norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        return u.mul_(2 * budget.eps).sub_(budget.eps)
    direction = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    u = torch.rand(len(x), generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    radius = budget.eps * u ** (1.0 / x[0].numel())
    return direction.div_(l2_norms(direction).clamp_min_(1e-12)).mul_(radius.view(-1, *([1] * (x.dim() - 1))))


def _project_l2(delta: torch.Tensor, eps: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Scale ``delta`` into the l2 ball of radius ``eps``, then clip it into ``[lo, hi]`` (which only shrinks it)."""
    return delta.mul_((eps / l2_norms(delta).clamp_min(1e-12)).clamp_(max=1.0)).clamp_(lo, hi)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """PGD, the only attack of this plugin."""
    return [PGD]
