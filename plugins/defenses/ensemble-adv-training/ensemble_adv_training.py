"""Ensemble adversarial training (Tramèr et al., 2018)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class StaticMLP(nn.Sequential):
    """A static model of another family than the reference CNN: fc 300 -> fc 300 -> logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 300),
            nn.ReLU(),
            nn.Linear(300, 300),
            nn.ReLU(),
            nn.Linear(300, num_classes),
        )


class StaticStridedCNN(nn.Sequential):
    """A static convolutional model unlike the reference: two 5x5 convolutions of stride 2, then logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        channels, height, width = input_shape
        super().__init__(
            nn.Conv2d(channels, 32, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * math.ceil(height / 4) * math.ceil(width / 4), num_classes),
        )


class EnsembleAdvTraining(Defense):
    r"""Adversarial training whose examples come in turn from the model being trained and from static models.

    .. math:: \tilde L(x, y) = \alpha\, L(x, y) + (1 - \alpha)\, L(x + \epsilon\, \mathrm{sign}(\nabla_x
              L_{g}(x, y)), y), \quad g \in \{f_\theta, g_1, g_2\} \text{ in turn, batch by batch}

    The static models (an MLP and a strided CNN, :class:`StaticMLP` and :class:`StaticStridedCNN`) are first
    trained plainly on the training split for ``static_share * ctx.epochs`` epochs (at least one), then frozen.
    Decoupling the examples from the model being trained is what keeps FGSM training from merely masking its
    own gradients: the model must also resist perturbations that transfer from other models, the black-box
    attacker's. Under the l2 norm the sign is replaced by ``g / ||g||_2``; under l0 the ``eps`` largest
    gradient entries are pushed to 0 or 1. Trains ``ctx.make_model()`` with Adam for ``ctx.epochs`` epochs; each
    phase stops early, with a log line, when ``ctx.time_budget`` is spent.

    Paper: Tramèr, Kurakin, Papernot, Goodfellow, Boneh and McDaniel, "Ensemble Adversarial Training:
    Attacks and Defenses", ICLR 2018, https://arxiv.org/abs/1705.07204 (MNIST: FGSM examples from the
    current model and pre-trained static models of other architectures).

    Parameters (their values: the [params] of plugin.toml):
        alpha: weight of the clean loss.
        static_share: the static models' epochs as a share of ``ctx.epochs``.
        lr: Adam's learning rate.
        batch_size: training batch size.

    Usage::

        model = EnsembleAdvTraining().train(ctx)
    """

    def train(self, ctx: TrainContext) -> nn.Module:
        """Pre-train the static models, then train on clean and FGSM examples from each source in turn."""
        deadline = time.monotonic() + ctx.time_budget
        statics: list[nn.Module] = [
            StaticMLP(ctx.input_shape, ctx.num_classes).to(ctx.device),
            StaticStridedCNN(ctx.input_shape, ctx.num_classes).to(ctx.device),
        ]
        static_epochs = max(1, round(self.static_share * ctx.epochs))
        fit = {"lr": self.lr, "batch_size": self.batch_size, "deadline": deadline}
        for static in statics:

            def plain_loss(x: torch.Tensor, y: torch.Tensor, static: nn.Module = static) -> torch.Tensor:
                return F.cross_entropy(static(x), y)

            if not ctx.fit(static, plain_loss, epochs=static_epochs, name=f"static {type(static).__name__}", **fit):
                break
            static.eval().requires_grad_(False)
        model = ctx.make_model()
        sources = [model, *statics]
        turn = 0

        def ensemble_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """Clean and FGSM examples, these from the model and each static one in turn."""
            nonlocal turn
            x_adv = fgsm(sources[turn % len(sources)].eval(), x, y, ctx.norm, ctx.eps)
            turn += 1
            model.train()
            return self.alpha * F.cross_entropy(model(x), y) + (1 - self.alpha) * F.cross_entropy(model(x_adv), y)

        ctx.fit(model, ensemble_loss, **fit)
        return model.eval()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """One fast-gradient step of size ``eps`` in ``norm`` on ``model``'s cross-entropy, clipped to [0, 1]."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    flat = grad.flatten(1)
    if norm == "linf":
        step = eps * flat.sign()
    elif norm == "l2":
        step = eps * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        top = flat.abs().topk(min(int(eps), flat.shape[1]), dim=1).indices
        step = torch.zeros_like(flat).scatter(1, top, flat.gather(1, top).sign())
    return (x + step.view_as(x)).clamp(0.0, 1.0).detach()


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """Ensemble adversarial training, the only defense of this plugin."""
    return [EnsembleAdvTraining]
