"""Defensive distillation (Papernot et al., 2016)."""

from __future__ import annotations

import time

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
        half = time.monotonic() + ctx.time_budget / 2  # each network gets half of the time budget
        teacher = ctx.make_model()

        def hot_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(teacher(x) / self.temperature, y)

        ctx.fit(teacher, hot_loss, lr=self.lr, batch_size=self.batch_size, deadline=half, name="teacher")
        teacher.eval()
        student = ctx.make_model()

        def soft_loss(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / self.temperature, dim=1)
            return -(soft * F.log_softmax(student(x) / self.temperature, dim=1)).sum(dim=1).mean()

        deadline = half + ctx.time_budget / 2
        ctx.fit(student, soft_loss, lr=self.lr, batch_size=self.batch_size, deadline=deadline, name="student")
        return student.eval()


@hookimpl
def arena_defenses() -> list[type[Defense]]:
    """Defensive distillation, the only defense of this plugin."""
    return [Distillation]
