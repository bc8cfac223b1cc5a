"""PGD adversarial training (Madry et al., 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class PGDAdvTraining(Defense):
    r"""Madry's min-max training: each batch is replaced by PGD adversarial examples of the model being trained.

    .. math:: \min_\theta\ \mathbb{E}_{(x, y)} \max_{\|\delta\| \le \epsilon} L(f_\theta(x + \delta), y)

    The inner maximum is PGD: a uniform random start in the ball, ``steps`` steps of size
    ``step_ratio * eps / steps`` (sign of the gradient for linf, the normalised gradient for l2), each
    followed by the projection onto the ball and onto [0, 1]. ``eps`` is ``ctx.eps``; it grows linearly
    from 0 over the first ``warmup`` share of the training steps (an eps schedule, which lets a model
    trained for few epochs at MNIST's eps 0.3 converge at all). Trains ``ctx.make_model()`` with Adam for
    ``ctx.epochs`` epochs, or ``min_epochs`` where the track asks for fewer (the robust model needs more
    epochs than a plain one); stops early, with a log line, when ``ctx.time_budget`` is spent.

    Paper: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018, https://arxiv.org/abs/1706.06083 (MNIST: 40 steps of 0.01 at eps 0.3;
    fewer, larger steps here to train in minutes on a CPU).

    Parameters (their values: the [params] of plugin.toml):
        steps: PGD steps per training batch.
        step_ratio: step size as a multiple of ``eps / steps``.
        warmup: share of the training steps over which eps grows from 0 to ``ctx.eps``.
        clean_weight: weight of a clean loss mixed into the adversarial one.
        min_epochs: the fewest epochs it trains, whatever the track's.
        lr: Adam's learning rate.
        batch_size: training batch size.

    Usage::

        model = PGDAdvTraining().train(ctx)
    """

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train on PGD examples of the current model; return it in eval mode."""
        model = ctx.make_model()
        epochs = max(ctx.epochs, self.min_epochs)
        total = epochs * math.ceil(len(ctx.x) / self.batch_size)
        done = 0

        def adversarial_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            nonlocal done
            eps = ctx.eps * min(1.0, (done + 1) / max(1.0, self.warmup * total))  # the warm-up's eps of this batch
            done += 1
            x_adv = pgd(model.eval(), x, y, ctx.norm, eps, self.steps, self.step_ratio * eps / self.steps, ctx)
            model.train()
            loss = F.cross_entropy(model(x_adv), y)
            if self.clean_weight:
                loss = self.clean_weight * F.cross_entropy(model(x), y) + (1 - self.clean_weight) * loss
            return loss

        ctx.fit(model, adversarial_loss, lr=self.lr, batch_size=self.batch_size, epochs=epochs)
        return model.eval()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    eps: float,
    steps: int,
    alpha: float,
    ctx: TrainContext,
) -> torch.Tensor:
    """PGD with a random start in the ``norm`` ball of radius ``eps``, ``steps`` steps of size ``alpha``."""
    noise = torch.rand(x.shape, generator=ctx.generator).to(x.device) * 2 - 1
    if norm == "linf":
        delta = eps * noise
    else:
        delta = _project(noise, norm, eps * float(torch.rand(1, generator=ctx.generator)))
    delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _project(delta.detach() + alpha * _ascent(grad, norm), norm, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def _ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit size: ``sign(g)`` for linf and l0, ``g / ||g||_2`` for l2."""
    if norm == "l2":
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return grad.sign()


def _project(delta: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the ``norm`` ball of radius ``eps`` (l0: keep the ``eps`` largest changes)."""
    flat = delta.flatten(1)
    if norm == "linf":
        flat = flat.clamp(-eps, eps)
    elif norm == "l2":
        flat = flat * (eps / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    else:
        keep = min(int(eps), flat.shape[1])
        mask = torch.zeros_like(flat).scatter(1, flat.abs().topk(keep, dim=1).indices, 1.0)
        flat = flat * mask
    return flat.view_as(delta)


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """PGD adversarial training, the only defense of this plugin."""
    return [PGDAdvTraining]
