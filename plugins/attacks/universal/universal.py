"""Universal adversarial perturbations (Moosavi-Dezfooli et al., 2017): one delta that fools most inputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arena import Attack, Budget, Target, hookimpl


class Universal(Attack):
    r"""One perturbation ``v`` for all inputs: maximise the loss of the inputs it does not fool yet, within eps.

    .. math:: \text{find } v,\ \|v\|_p \le \epsilon:\ \ \Pr_x[\hat k(x + v) \ne \hat k(x)] \ge 1 - \delta;\quad
              v \leftarrow P_{p,\epsilon}\Big(v + \alpha\, s\big(\nabla_v \textstyle\sum_{i \in B,\,
              \hat k(x_i + v) = \hat k(x_i)} L(f(x_i + v), \hat k(x_i))\big)\Big)

    ``k^`` is the model's label and ``f`` its logits; ``s`` is ``sign`` for linf and ``g / ||g||_2`` for l2;
    ``alpha = rel_step * eps``; ``P`` projects onto the eps-ball. As in Moosavi-Dezfooli et al.'s Algorithm 1,
    ``v`` is grown by visiting the data and pushing only the inputs it does not fool yet across a boundary, with a
    projection after each update, until it fools a fraction ``fooling`` (their ``1 - delta``) of the data; the
    minimal per-image DeepFool step is replaced by a stochastic gradient step on a minibatch ``B`` of
    ``batch_size`` images (Shafahi et al.), which is batched and finds stronger perturbations. The data are
    ``train_size`` images of the public training split (``target.train_data``), drawn with ``budget.generator``;
    each of at most ``passes`` passes visits them in a fresh order, and the ``v`` that fooled most of them is kept.
    The model is ``target.model`` in white-box and gray-box and ``target.substitute`` in black-box, where ``v``
    must transfer. ``v`` is built once per match, on the first batch (the log says how much of the training data
    it fools), and every batch gets ``clip(x + v)``.

    Papers: Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations", CVPR 2017,
    https://arxiv.org/abs/1610.08401; Shafahi, Najibi, Xu, Dickerson, Davis and Goldstein, "Universal Adversarial
    Training", AAAI 2020, https://arxiv.org/abs/1811.11304 (the stochastic gradient solver).

    Parameters (their values: the [params] of plugin.toml):
        train_size: training images ``v`` is built on.
        passes: the most passes over them.
        batch_size: images per update of ``v``.
        rel_step: the step size alpha as a fraction of eps.
        fooling: the fooling rate on the training images that ends the passes.

    Usage::

        x_adv = Universal().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box", "black-box")
    targeted = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._built: tuple[Target, str, float, torch.Tensor] | None = None

    def check_params(self) -> None:
        """``train_size``, ``passes``, ``batch_size`` at least 1, ``rel_step > 0``, ``fooling`` in (0, 1]."""
        if min(self.train_size, self.passes, self.batch_size) < 1 or self.rel_step <= 0 or not 0 < self.fooling <= 1:
            raise ValueError("universal needs train_size, passes, batch_size >= 1, rel_step > 0, fooling in (0, 1]")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """``clip(x + v)``, with ``v`` built on the first call of the match."""
        if self._built is None or self._built[:3] != (target, budget.norm, budget.eps):
            model = target.substitute if target.threat == "black-box" else target.model
            images = target.train_data[0]
            generator = budget.generator
            pick = torch.randperm(len(images), generator=generator, device=generator.device)[: self.train_size]
            v = self.build(model.eval(), images[pick.cpu()].to(x.device), budget)
            self._built = (target, budget.norm, budget.eps, v)
        return (x.detach() + self._built[3]).clamp_(0.0, 1.0)

    def build(self, model: nn.Module, images: torch.Tensor, budget: Budget) -> torch.Tensor:
        """The universal perturbation ``v`` (shaped like one image, batch dimension 1) for ``images``."""
        labels = _predict(model, images)
        alpha = self.rel_step * budget.eps
        generator = budget.generator
        v = torch.zeros_like(images[:1])
        best, best_rate = v, -1.0
        for number in range(1, self.passes + 1):
            order = torch.randperm(len(images), generator=generator, device=generator.device).to(images.device)
            for batch in order.split(self.batch_size):
                with torch.enable_grad():
                    v_in = v.clone().requires_grad_(True)
                    logits = model((images[batch] + v_in).clamp(0.0, 1.0))
                    still = logits.detach().argmax(dim=1) == labels[batch]
                    loss = F.cross_entropy(logits, labels[batch], reduction="none")
                    (grad,) = torch.autograd.grad((loss * still).sum(), v_in)
                if budget.norm == "linf":
                    v = (v + alpha * grad.sign()).clamp_(-budget.eps, budget.eps)
                else:
                    v = v + alpha * grad / grad.norm().clamp_min(1e-12)
                    v = v * (budget.eps / v.norm().clamp_min(1e-12)).clamp(max=1.0)
            rate = (_predict(model, (images + v).clamp(0.0, 1.0)) != labels).float().mean().item()
            print(f"universal: pass {number}: v fools {rate:.3f} of {len(images)} training images", flush=True)
            if rate > best_rate:
                best, best_rate = v, rate
            if rate >= self.fooling:
                break
        return best


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The model's labels for ``x``, in batches."""
    return torch.cat([model(part).argmax(dim=1) for part in x.split(batch_size)])


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """The universal perturbation attack, the only attack of this plugin."""
    return [Universal]
