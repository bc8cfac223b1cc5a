"""DeepFool, the minimal-perturbation attack of Moosavi-Dezfooli et al. (2016)."""

from __future__ import annotations

import torch

from arena import Attack, Budget, Target, hookimpl


class DeepFool(Attack):
    r"""Linearise the classifier around the current point and step onto the nearest decision boundary.

    .. math:: \hat l = \arg\min_{k \ne y} \frac{|f_k(x^t)|}{\|w_k\|_q},\quad
              r^t = \frac{|f_{\hat l}| + 10^{-4}}{\|w_{\hat l}\|_2^2}\, w_{\hat l}\ \ (l2),\quad
              r^t = \frac{|f_{\hat l}| + 10^{-4}}{\|w_{\hat l}\|_1}\, \mathrm{sign}(w_{\hat l})\ \ (linf)

    with ``f_k = Z_k - Z_y`` and ``w_k = grad f_k`` (``Z``: the logits of ``target.model``), and ``q`` the dual
    norm: ``q = 2`` for l2, ``q = 1`` for linf. The iterate is
    ``x^{t+1} = clip(x + (1 + overshoot) sum_t r^t)``; a sample stops as soon as it is misclassified once
    snapped into the budget and onto the pixel grid (``budget.snap``, as the referee will see it), and after
    ``steps`` iterations at most. Only the ``candidates`` classes ranked highest at ``x`` are tried. DeepFool seeks
    the smallest perturbation that flips the label, regardless of eps; the result is then projected onto the
    eps-ball (a perturbation longer than eps is shrunk and may no longer fool the model).

    Paper: Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to fool deep neural
    networks", CVPR 2016, https://arxiv.org/abs/1511.04599 (Algorithm 2, and section 3.2 for linf).

    Parameters (their values: the [params] of plugin.toml):
        steps: the most linearisation steps.
        overshoot: how far past the boundary to go, relative to the perturbation.
        candidates: how many of the top-ranked classes (the true one included) to consider.

    Usage::

        x_adv = DeepFool().run(target, x, y, budget)
    """

    norms = ("l2", "linf")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``steps >= 1``, ``overshoot >= 0``, ``candidates >= 2``."""
        if self.steps < 1 or self.overshoot < 0 or self.candidates < 2:
            raise ValueError("deepfool needs steps >= 1, overshoot >= 0 and candidates >= 2")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """DeepFool on the whole batch (a sample leaves it once fooled), then projection onto the budget."""
        model = target.model.eval()
        x = x.detach()
        view = (-1, *([1] * (x.dim() - 1)))
        total = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.arange(len(x), device=x.device)
        classes: torch.Tensor | None = None
        for _ in range(self.steps):
            with torch.enable_grad():
                x_in = x_adv[active].requires_grad_(True)
                logits = model(x_in)
                if classes is None:  # the candidates: the true class first, then the top-ranked others
                    ranked = logits.detach().scatter(1, y[:, None], torch.inf).argsort(dim=1, descending=True)
                    classes = ranked[:, : min(self.candidates, logits.shape[1])]
                fooled = logits.detach().argmax(dim=1) != y[active]
                if fooled.any():  # judged as the referee will see it: in the budget, on the pixel grid
                    candidates = fooled.nonzero().squeeze(1)
                    snapped = budget.snap(x_adv[active[candidates]], x[active[candidates]])
                    fooled[candidates] = model(snapped).detach().argmax(dim=1) != y[active[candidates]]
                keep = ~fooled
                if not keep.any():
                    break
                active, classes, logits = active[keep], classes[keep], logits[keep]
                picked = logits.gather(1, classes)
                grads = [
                    torch.autograd.grad(picked[:, k].sum(), x_in, retain_graph=k + 1 < picked.shape[1])[0][keep]
                    for k in range(picked.shape[1])
                ]
            w = torch.stack(grads[1:], dim=1) - grads[0][:, None]  # (n, k - 1, C, H, W)
            f = (picked[:, 1:] - picked[:, :1]).detach().abs()  # (n, k - 1)
            size = w.flatten(2).norm(p=2 if budget.norm == "l2" else 1, dim=2).clamp_min(1e-12)
            nearest = (f / size).argmin(dim=1)
            w_l = w[torch.arange(len(w), device=w.device), nearest]
            f_l, size_l = f.gather(1, nearest[:, None]), size.gather(1, nearest[:, None])
            if budget.norm == "l2":
                step = w_l * ((f_l + 1e-4) / size_l.square()).view(view)
            else:
                step = w_l.sign() * ((f_l + 1e-4) / size_l).view(view)
            total[active] += step
            x_adv[active] = (x[active] + (1 + self.overshoot) * total[active]).clamp_(0.0, 1.0)
        delta = x_adv - x
        if budget.norm == "linf":
            delta.clamp_(-budget.eps, budget.eps)
        else:
            delta.mul_((budget.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp_(max=1.0).view(view))
        return (x + delta).clamp_(0.0, 1.0)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """DeepFool, the only attack of this plugin."""
    return [DeepFool]
