"""SPSA, the gradient-free attack of Uesato et al. (2018), on the arena's gradient estimate."""

from __future__ import annotations

import time

import torch

from arena import Attack, Budget, Target, hookimpl, spsa_descent


class SPSA(Attack):
    r"""Projected descent on the logit margin, its gradient estimated by SPSA from forward passes only.

    .. math:: x^{t+1} = \Pi_{B_\epsilon(x) \cap [0,1]^d}\big(x^t - \alpha\, s(\hat g(x^t))\big),\quad
              \hat g = \text{SPSA estimate of } \nabla_x \big(z_y - \max_{i \ne y} z_i\big)

    ``s`` is ``sign`` for linf and ``v / ||v||_2`` for l2, ``alpha = rel_step * eps``. The estimate
    (``arena.spsa_gradient``, run by ``arena.spsa_descent``) averages ``samples`` pairs of passes at
    ``x +- delta * v`` for random sign vectors ``v``, with ``delta = rel_delta * eps`` per pixel (linf)
    or ``rel_delta * eps / sqrt(d)`` (l2): wide enough to see across a quantisation step that gives
    autograd a zero gradient. It needs no gradient and no knowledge of the defense's code, so it checks
    that a defense's robustness is not a masked gradient; a randomized model draws anew at every pass,
    which averages over its draws (EOT). A sample keeps the first iterate the model misclassifies. The
    passes run on the model the attack holds: no query is counted.

    Paper: Uesato, O'Donoghue, van den Oord and Kohli, "Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks", ICML 2018, https://arxiv.org/abs/1802.05666.

    Parameters (their values: the [params] of plugin.toml):
        steps: descent steps.
        samples: sign vectors per estimate, each costing two passes.
        rel_delta: the finite-difference width as a fraction of eps.
        rel_step: the step as a fraction of eps.
        seconds: the time allowed per batch: against a slow model (Defense-GAN) fewer steps are
            taken, measured from the fastest of three passes on the batch, so the match fits its time limit.

    Usage::

        x_adv = SPSA().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """``steps`` estimated-gradient steps (``arena.spsa_descent``) for the samples not yet misclassified."""
        model = target.model.eval()
        per_step = _pass_seconds(model, x) * 2 * self.samples  # a pass on the batch, twice per sign vector
        steps = max(1, min(self.steps, int(self.seconds / max(per_step, 1e-9))))
        return spsa_descent(model, x, y, budget, steps, self.samples, self.rel_delta, self.rel_step)


def _pass_seconds(model: torch.nn.Module, x: torch.Tensor, probes: int = 3) -> float:
    """The fastest of ``probes`` passes of ``model`` on ``x``: one pass slowed by a busy machine would cut the steps."""
    fastest = float("inf")
    for _ in range(probes):
        started = time.perf_counter()
        with torch.no_grad():
            model(x)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """SPSA, the only attack of this plugin."""
    return [SPSA]
