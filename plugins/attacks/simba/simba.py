"""SimBA, the Simple Black-box Attack of Guo et al. (2019), in the pixel basis."""

from __future__ import annotations

import math

import torch

from arena import Attack, Budget, Target, hookimpl


class SimBA(Attack):
    r"""Simple Black-box Attack: try one random pixel at a time, keep a step if the true class loses mass.

    .. math:: q \sim \text{pixels, without replacement};\quad
              x \leftarrow x \mp \delta e_q \ \text{if } p(y \mid x \mp \delta e_q) < p(y \mid x)

    Only ``target.query`` is used (probabilities), so it plays under every threat model. All samples
    advance together; a sample stops querying once it is misclassified or its queries are spent, and
    the attack never asks for more than ``budget.max_queries`` images per sample nor more than
    ``target.queries_left``. The pixel order is drawn from ``budget.generator``.
    linf: ``delta = eps`` and every pixel is visited once, so ``||x' - x||_inf <= eps``.
    l2: ``delta = eps / sqrt(l2_pixels)`` and at most ``l2_pixels`` steps are kept per sample; the
    steps are orthogonal, so ``||x' - x||_2 <= eps``.

    Paper: Guo, Gardner, You, Wilson and Weinberger, "Simple Black-box Adversarial Attacks",
    ICML 2019, https://arxiv.org/abs/1905.07121

    Parameters (their values: the [params] of plugin.toml):
        l2_pixels: the most pixels changed per sample under the l2 norm.

    Usage::

        x_adv = SimBA().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box", "black-box")
    targeted = False

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """Greedy coordinate-wise search in the pixel basis, batched over ``x``."""
        n = len(x)
        x_adv = x.detach().reshape(n, -1).clone()
        pixels = x_adv.shape[1]
        if budget.norm == "linf":
            delta, max_steps = budget.eps, pixels
        else:
            delta, max_steps = budget.eps / math.sqrt(self.l2_pixels), self.l2_pixels
        generator = budget.generator
        order = torch.rand(n, pixels, generator=generator, device=generator.device).argsort(dim=1)
        order = order.to(x.device)
        used = torch.zeros(n, dtype=torch.long, device=x.device)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        p_true = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)

        def ask(rows: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Query the images of ``rows`` still within budget; return their positions and probabilities."""
            keep = (used[rows] < budget.max_queries).nonzero().squeeze(1)[: max(target.queries_left, 0)]
            if len(keep) == 0:
                return keep, images[:0]
            probs = target.query(images[keep].reshape(-1, *x.shape[1:])).to(x.device)
            used[rows[keep]] += 1
            return keep, probs

        started, probs = ask(torch.arange(n, device=x.device), x_adv)
        p_true[started] = probs.gather(1, y[started, None]).squeeze(1).to(x.dtype)
        broken[started] = probs.argmax(dim=1) != y[started]
        alive = torch.zeros(n, dtype=torch.bool, device=x.device)
        alive[started] = True

        for i in range(pixels):
            active = alive & ~broken & (steps < max_steps) & (used < budget.max_queries)
            if not active.any():
                break
            coord = order[:, i : i + 1]
            current = x_adv.gather(1, coord).squeeze(1)
            improved = torch.zeros(n, dtype=torch.bool, device=x.device)
            for value in ((current - delta).clamp(0.0, 1.0), (current + delta).clamp(0.0, 1.0)):
                wanted = (active & ~improved & (value != current)).nonzero().squeeze(1)
                candidates = x_adv[wanted].scatter(1, coord[wanted], value[wanted, None])
                keep, probs = ask(wanted, candidates)
                if len(keep) == 0:
                    continue
                asked = wanted[keep]
                p = probs.gather(1, y[asked, None]).squeeze(1).to(x.dtype)
                better = p < p_true[asked]
                won = asked[better]
                x_adv[won] = candidates[keep][better]
                p_true[won] = p[better]
                broken[won] = probs[better].argmax(dim=1) != y[won]
                improved[won] = True
            steps += improved
        return x_adv.reshape(x.shape)


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """SimBA, the only attack of this plugin."""
    return [SimBA]
