"""FGSM adversarial training (Goodfellow et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class FGSMAdvTraining(Defense):
    r"""Adversarial training on FGSM examples made on the fly with the model being trained.

    .. math:: \tilde L(x, y) = \alpha\, L(x, y) + (1 - \alpha)\, L(\mathrm{clip}_{[0,1]}(x + \epsilon\,
              \mathrm{sign}(\nabla_x L(x, y))), y)

    ``eps`` is ``ctx.eps``; under the l2 norm the sign is replaced by the fast gradient method
    ``g / ||g||_2``, under l0 the ``eps`` entries of largest gradient are pushed to 0 or 1. Trains
    ``ctx.make_model()`` with Adam for ``ctx.epochs`` epochs and stops early, with a log line, when
    ``ctx.time_budget`` seconds are spent. With ``augment`` every batch comes under fresh draws of the
    distortion family the track evaluates (``ctx.batches(augment=True)``): what the model learns around its
    training images then holds around the secret evaluation images too.

    Paper: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples",
    ICLR 2015, https://arxiv.org/abs/1412.6572 (section 5, alpha = 0.5).

    Parameters (their values: the [params] of plugin.toml):
        alpha: weight of the clean loss.
        augment: train on draws of the track's distortion family.
        lr: Adam's learning rate.
        batch_size: training batch size.

    Usage::

        model = FGSMAdvTraining().train(ctx)
    """

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train on the mixed clean and FGSM loss; return the model in eval mode."""
        model = ctx.make_model()

        def mixed_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            clean_loss = F.cross_entropy(model(x), y)
            (grad,) = torch.autograd.grad(clean_loss, x, retain_graph=True)
            x_adv = (x + _step(grad, ctx.norm, ctx.eps)).clamp(0.0, 1.0).detach()
            return self.alpha * clean_loss + (1 - self.alpha) * F.cross_entropy(model(x_adv), y)

        ctx.fit(model, mixed_loss, lr=self.lr, batch_size=self.batch_size, augment=self.augment)
        return model.eval()


def _step(grad: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The fast gradient step of size ``eps``: ``eps * sign(g)`` for linf, ``eps * g / ||g||_2`` per sample for
    l2, and for l0 the ``eps`` entries of largest ``|g|`` pushed by 1 in the direction of their sign."""
    flat = grad.flatten(1)
    if norm == "linf":
        step = eps * flat.sign()
    elif norm == "l2":
        step = eps * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        top = flat.abs().topk(min(int(eps), flat.shape[1]), dim=1).indices
        step = torch.zeros_like(flat).scatter(1, top, flat.gather(1, top).sign())
    return step.view_as(grad)


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """FGSM adversarial training, the only defense of this plugin."""
    return [FGSMAdvTraining]
