"""Defensive distillation (Papernot et al., 2016)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Distillation(Defense):
    r"""A teacher trained at softmax temperature T labels the training split softly; a student learns them at T.

    .. math:: F^T(x) = \mathrm{softmax}(z(x) / T), \quad
              \min_{\theta_s}\ \mathbb{E}_x\ \mathrm{CE}\big(F^T_{\theta_t}(x),\ F^T_{\theta_s}(x)\big)

    Both networks are ``ctx.make_model()``, each trained with Adam for ``ctx.epochs`` epochs (the teacher on
    the hard labels at temperature T, the student on the teacher's soft labels at T, computed batch by batch).
    The returned module is the student read at T = 1: its logits ``z(x)`` are about T times larger than a
    plainly trained model's, so its softmax saturates and the cross-entropy gradient of most correctly
    classified inputs vanishes (in float32 it is exactly zero). That is what stops FGSM and PGD on the
    cross-entropy; attacks on the logits, as Carlini and Wagner's, are not stopped. Each phase gets half of
    ``ctx.time_budget``; a phase that runs out stops with a log line.

    Paper: Papernot, McDaniel, Wu, Jha and Swami, "Distillation as a Defense to Adversarial Perturbations
    against Deep Neural Networks", IEEE S&P 2016, https://arxiv.org/abs/1511.04508 (T = 100 on MNIST);
    broken by Carlini and Wagner, https://arxiv.org/abs/1608.04644.

    Parameters (their values: the [params] of plugin.toml):
        temperature: the softmax temperature T of training.
        lr: Adam's learning rate.
        batch_size: training batch size.

    Usage::

        model = Distillation().train(ctx)
    """

    def train(self, ctx: TrainContext) -> nn.Module:
        """Train the teacher, then the student on its soft labels; return the student (read at T = 1)."""
        started = time.monotonic()
        teacher = ctx.make_model()
        self._fit(ctx, teacher, lambda x, y: F.cross_entropy(teacher(x) / self.temperature, y), "teacher", started)
        teacher.eval()
        student = ctx.make_model()

        def soft_loss(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / self.temperature, dim=1)
            return -(soft * F.log_softmax(student(x) / self.temperature, dim=1)).sum(dim=1).mean()

        self._fit(ctx, student, soft_loss, "student", started + ctx.time_budget / 2)
        return student.eval()

    def _fit(
        self,
        ctx: TrainContext,
        model: nn.Module,
        loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        name: str,
        started: float,
    ) -> None:
        """Adam on ``loss_of(x, y)`` for ``ctx.epochs`` epochs or half of the time budget from ``started``."""
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        deadline = started + ctx.time_budget / 2
        for epoch in range(1, ctx.epochs + 1):
            for x, y in ctx.batches(self.batch_size):
                if time.monotonic() > deadline:
                    ctx.log(f"{name}: time budget of {ctx.time_budget / 2:g} s spent in epoch {epoch}: stopping")
                    return
                loss = loss_of(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            ctx.log(f"{name}: epoch {epoch}/{ctx.epochs}: last batch loss {loss.item():.4f}")


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """Defensive distillation, the only defense of this plugin."""
    return [Distillation]
