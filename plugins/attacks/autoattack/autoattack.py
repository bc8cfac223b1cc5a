"""The arena's reference adaptive attack: AutoAttack's recipe (Croce and Hein, 2020) on torchattacks' parts."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from arena import Attack, Budget, Target, hookimpl, spsa_descent

NORMS = {"linf": "Linf", "l2": "L2"}


class AutoAttack(Attack):
    r"""A parameter-free ensemble run in sequence, each part on the samples the earlier ones left correct.

    1. APGD-CE: projected gradient ascent on the cross-entropy with a step size that adapts to progress;
    2. APGD-T: targeted APGD on the difference-of-logits-ratio loss below, scale-invariant (no masking by
       large logits), against the ``target_classes`` most likely wrong classes;
    3. Square: random search with square-shaped updates at the corners of the eps-ball on the margin loss,
       using no gradient at all, so a defense that hides its gradient (a quantisation without a
       straight-through stand-in, a vanishing softmax) still meets an attack that does not need one;
    4. SPSA (the arena's ``spsa_descent``, finite differences as wide as eps): descent on the margin with a
       gradient estimated from forward passes, the other check against a masked gradient.

    .. math:: \text{DLR}_t(x, y) = -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2}
              \quad (z \text{ the logits}, \pi \text{ their order, largest first})

    A model whose outputs change between two passes on the same images is randomized: the gradient parts
    then average ``eot`` passes (Expectation over Transformation, Athalye et al. 2018) and a sample counts as
    broken only when most passes misclassify it. The defense's own BPDA stand-ins come with its forward. Every
    candidate is judged as the referee will see it (``budget.snap``: in the budget, on the pixel grid).
    Detectors (``reject``) are not aimed around. Square queries the model it holds, not ``target.query``:
    no query is counted.

    Papers: Croce and Hein, "Reliable Evaluation of Adversarial Robustness with an Ensemble of Diverse
    Parameter-free Attacks", ICML 2020, https://arxiv.org/abs/2003.01690 (APGD, DLR, the ensemble);
    Andriushchenko, Croce, Flammarion and Hein, "Square Attack", ECCV 2020, https://arxiv.org/abs/1912.00049.

    Parameters (their values: the [params] of plugin.toml):
        steps: iterations of each APGD run.
        target_classes: wrong classes APGD-T aims at, the most likely first.
        square_queries: model evaluations per sample for Square.
        eot: passes averaged per gradient for a randomized model.
        spsa_steps: steps of the SPSA part.
        spsa_samples: sign vectors per SPSA estimate.
        seconds: the time allowed per batch: against a slow or randomized model the steps and queries
            shrink in proportion, measured from the fastest of three passes with gradient, so the match fits its
            time limit.

    Usage::

        x_adv = AutoAttack().run(target, x, y, budget)
    """

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box")
    targeted = False

    def check_params(self) -> None:
        """``steps``, ``target_classes`` and ``eot`` are at least 1."""
        for name in ("steps", "target_classes", "eot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """APGD-CE, APGD-T, Square and SPSA in turn, each on the samples still classified correctly."""
        model = target.model.eval()
        x = x.detach()
        passes = self.eot if randomized(model, x) else 1
        share = self._share(model, x, y, passes)
        steps, queries = max(1, round(self.steps * share)), int(self.square_queries * share)
        spsa_steps = int(self.spsa_steps * share)
        seed = int(torch.randint(2**31 - 1, (1,), generator=budget.generator, device=budget.generator.device))
        common = {"norm": NORMS[budget.norm], "eps": budget.eps, "seed": seed}
        targeted = torchattacks.APGDT(model, steps=steps, eot_iter=passes, n_classes=target.num_classes, **common)
        targeted.n_target_classes = min(self.target_classes, target.num_classes - 1)
        parts = [torchattacks.APGD(model, steps=steps, eot_iter=passes, loss="ce", **common), targeted]
        if queries > 0:
            parts.append(torchattacks.Square(model, n_queries=queries, **common))
        if spsa_steps > 0:
            parts.append(lambda x, y: spsa_descent(model, x, y, budget, spsa_steps, self.spsa_samples, 1.0))
        x_adv = x.clone()
        left = ~broken(model, x, y, passes)
        for part in parts:
            index = left.nonzero().squeeze(1)
            if len(index) == 0:
                break
            candidate = budget.snap(part(x[index], y[index]).detach(), x[index])
            fooled = broken(model, candidate, y[index], passes)
            x_adv[index[fooled]] = candidate[fooled]
            left[index[fooled]] = False
        return x_adv

    def _share(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> float:
        """The share of the whole recipe that fits in ``seconds``, from the fastest of three passes with gradient.

        The recipe costs about ``steps * passes * (1 + target_classes)`` passes with gradient, ``square_queries / 2``
        and ``spsa_steps * spsa_samples`` (forward passes count half), on the whole batch at worst.
        """
        seconds = float("inf")
        for _ in range(3):  # the fastest: one pass slowed by a busy machine would cut the recipe
            started = time.perf_counter()
            probe = x.clone().requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(F.cross_entropy(model(probe), y), probe)
            seconds = min(seconds, time.perf_counter() - started)
        work = (
            self.steps * passes * (1 + self.target_classes)
            + self.square_queries / 2
            + self.spsa_steps * self.spsa_samples
        )
        return min(1.0, self.seconds / max(seconds * work, 1e-9))


@torch.no_grad()
def randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether two passes of ``model`` on the same images disagree (it draws at inference)."""
    probe = x[:32]
    return not torch.equal(model(probe), model(probe))


@torch.no_grad()
def broken(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int) -> torch.Tensor:
    """Samples that most of ``passes`` passes of ``model`` misclassify."""
    wrong = sum((model(x).argmax(dim=1) != y).int() for _ in range(passes))
    return wrong * 2 > passes


@hookimpl
def arena_attacks() -> list[type[Attack]]:
    """AutoAttack, the only attack of this plugin."""
    return [AutoAttack]
