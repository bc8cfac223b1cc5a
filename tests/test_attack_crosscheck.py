"""Our FGSM, PGD and Carlini-Wagner against torchattacks', an independent implementation, on the same model and data.

On the digits model of plugin_harness, with the same parameters, the robust accuracies (accuracy on the adversarial
examples) must agree within 2 points. bench/attack_speed.py does the same on MNIST and times both sides.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchattacks  # installed by the Makefile, without its torch and torchvision
from plugin_harness import HarnessTarget, accuracy, digits, load_plugin, reference_model
from torch import nn

from arena import Budget

TOLERANCE = 0.02


pytestmark = pytest.mark.usefixtures("one_thread")


def ours(name: str, model: nn.Module, norm: str, eps: float, **params: object) -> float:
    """Robust accuracy of ``model`` on the digits test split under our attack ``name``."""
    _, _, x, y = digits()
    attack = load_plugin("attack", name)(**params)
    x_adv = attack.run(HarnessTarget(model, model), x, y, Budget(norm, eps, 0, torch.Generator().manual_seed(0)))
    return accuracy(model, x_adv, y)


def theirs(attack: object, model: nn.Module) -> float:
    """Robust accuracy of ``model`` on the digits test split under a torchattacks attack."""
    _, _, x, y = digits()
    torch.manual_seed(0)  # torchattacks draws its random starts from the global generator
    return accuracy(model, attack(x, y), y)  # type: ignore[operator]


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_fgsm_agrees_with_torchattacks(eps: float) -> None:
    model = reference_model()
    mine, reference = ours("fgsm", model, "linf", eps), theirs(torchattacks.FGSM(model, eps=eps), model)
    assert 0.1 < reference < 0.95, "an eps where the comparison means something"
    assert abs(mine - reference) <= TOLERANCE, (mine, reference)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_pgd_agrees_with_torchattacks(norm: str, eps: float) -> None:
    model = reference_model()
    steps, alpha = 40, eps * 2.5 / 40
    kind = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    reference = theirs(kind(model, eps=eps, alpha=alpha, steps=steps, random_start=True), model)
    for early_stop in (False, True):
        mine = ours("pgd", model, norm, eps, steps=steps, rel_step=alpha / eps, early_stop=early_stop)
        assert 0.1 < reference < 0.95
        assert abs(mine - reference) <= TOLERANCE, (early_stop, mine, reference)


class ShiftedLogits(nn.Module):
    """The same classifier with every logit raised by a constant (softmax, argmax and margins are unchanged).

    torchattacks' CW takes ``max((1 - onehot) * Z)`` for the best other logit, which counts the true class as 0:
    when all other logits are negative its margin loss is flat. With positive logits it computes the paper's
    ``max_{i != y} Z_i``, so the comparison is of the algorithm, not of that detail.
    """

    def __init__(self, model: nn.Module, shift: float = 100.0) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def test_cw_agrees_with_torchattacks() -> None:
    # a copy: torchattacks' CW calls backward(), which fills the gradients of the shared model's parameters
    model = ShiftedLogits(copy.deepcopy(reference_model())).eval()
    params = {"c": 1.0, "confidence": 0.0, "steps": 100, "lr": 0.01}
    mine = ours("cw-l2", model, "l2", 1e6, binary_steps=1, **params)
    reference = theirs(torchattacks.CW(model, c=1.0, kappa=0.0, steps=100, lr=0.01), model)
    assert 0.05 < reference < 0.95
    assert abs(mine - reference) <= TOLERANCE, (mine, reference)
