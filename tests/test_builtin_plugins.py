"""The built-in attacks and defenses, played in-process on scikit-learn's digits (see plugin_harness)."""

from __future__ import annotations

import re

import pytest
import torch
from plugin_harness import (
    PLUGINS,
    REQUIRED_FIELDS,
    HarnessTarget,
    accuracy,
    digits,
    load_manifest,
    load_module,
    make_attack,
    make_defense,
    reference_model,
    substitute_model,
    train_context,
)
from torch import nn

from arena import Attack, Budget, Defense

ATTACKS = ("fgsm", "simba", "transfer")
DEFENSES = ("undefended", "fgsm-adv-training")
EPS = {"linf": 0.2, "l2": 1.0}
MAX_QUERIES = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def budget(norm: str = "linf", seed: int = 0, max_queries: int = MAX_QUERIES) -> Budget:
    """A digits-sized budget (eps 0.2 in linf, 1.0 in l2) with a freshly seeded generator."""
    return Budget(norm, EPS[norm], max_queries, torch.Generator().manual_seed(seed))


def target_for(attack: Attack, n: int, max_queries: int = MAX_QUERIES) -> HarnessTarget:
    """A target under the first threat model the attack plays, with ``max_queries`` per sample."""
    return HarnessTarget(reference_model(), substitute_model(), attack.threats[0], max_queries * n)


def test_digits_models_are_trained() -> None:
    _, _, x, y = digits()
    assert accuracy(reference_model(), x, y) > 0.93
    assert accuracy(substitute_model(), x, y) > 0.9


# --------------------------------------------------------------------------------------------------
# Manifests and classes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), [("attack", a) for a in ATTACKS] + [("defense", d) for d in DEFENSES])
def test_manifest_agrees_with_its_class(kind: str, name: str) -> None:
    folder = PLUGINS / f"{kind}s" / name
    manifest = load_manifest(folder)
    assert all(manifest.get(field) for field in REQUIRED_FIELDS)
    assert manifest["name"] == name and re.fullmatch(r"[a-z0-9-]+", name)
    assert manifest["kind"] == kind
    module = load_module(folder)
    hooks = [hook for hook in ("arena_attacks", "arena_defenses") if hasattr(module, hook)]
    assert hooks == [f"arena_{kind}s"]
    (cls,) = getattr(module, hooks[0])()
    assert issubclass(cls, Attack if kind == "attack" else Defense)
    if kind == "attack":
        assert list(cls.norms) == manifest["norms"]
        assert list(cls.threats) == manifest["threats"]
        assert cls.targeted == manifest["targeted"]
    assert "https://arxiv.org/" in (cls.__doc__ or "")
    params = manifest.get("params", {})
    assert cls().params == params  # the manifest states them once; the class reads them from there
    assert cls(**params).params == params


# --------------------------------------------------------------------------------------------------
# Every attack: well-formed, within budget, deterministic, leaves the models alone
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_output_is_well_formed_and_within_budget(name: str, norm: str) -> None:
    _, _, x, y = digits()
    x, y = x[:200], y[:200]
    attack = make_attack(name)
    x_adv = attack.run(target_for(attack, len(x)), x, y, budget(norm))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= EPS[norm] + 1e-5
    assert (size > 0).float().mean() > 0.5


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_deterministic_under_a_seed_and_leaves_no_gradients(name: str) -> None:
    _, _, x, y = digits()
    x, y = x[:100], y[:100]
    attack = make_attack(name)
    first = attack.run(target_for(attack, len(x)), x, y, budget(seed=3))
    second = attack.run(target_for(attack, len(x)), x, y, budget(seed=3))
    assert torch.equal(first, second)
    models: list[nn.Module] = [reference_model(), substitute_model()]
    assert all(p.grad is None for model in models for p in model.parameters())


def test_fgsm_breaks_an_undefended_model() -> None:
    _, _, x, y = digits()
    model = reference_model()
    x_adv = make_attack("fgsm").run(HarnessTarget(model, substitute_model()), x, y, budget())
    assert accuracy(model, x, y) > 0.93
    assert accuracy(model, x_adv, y) < 0.3


def test_fgsm_leaves_zero_gradient_samples_unchanged_under_l2() -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(flat[1].weight)
    x = torch.rand(4, 1, 8, 8)
    x_adv = make_attack("fgsm").run(HarnessTarget(flat, flat), x, torch.zeros(4, dtype=torch.long), budget("l2"))
    assert torch.equal(x_adv, x)


# --------------------------------------------------------------------------------------------------
# SimBA: queries only, within budget
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_simba_stays_within_its_query_budget_and_lowers_accuracy(norm: str) -> None:
    _, _, x, y = digits()
    model = reference_model()
    target = HarnessTarget(model, substitute_model(), "black-box", MAX_QUERIES * len(x))
    x_adv = make_attack("simba").run(target, x, y, budget(norm))
    assert 0 < target.queries_used <= MAX_QUERIES * len(x)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - (0.3 if norm == "linf" else 0.15)


def test_simba_respects_queries_left_below_the_per_sample_budget() -> None:
    _, _, x, y = digits()
    target = HarnessTarget(reference_model(), substitute_model(), "black-box", 3 * len(x) // 2)
    make_attack("simba").run(target, x, y, budget(max_queries=MAX_QUERIES))
    assert target.queries_left == 0


def test_simba_does_not_query_for_samples_already_misclassified() -> None:
    _, _, x, y = digits()
    model = reference_model()
    with torch.no_grad():
        wrong = model(x).argmax(dim=1) != y
    assert wrong.any()
    target = HarnessTarget(model, substitute_model(), "black-box", MAX_QUERIES * int(wrong.sum()))
    x_adv = make_attack("simba").run(target, x[wrong], y[wrong], budget())
    assert target.queries_used == int(wrong.sum())
    assert torch.equal(x_adv, x[wrong])


# --------------------------------------------------------------------------------------------------
# Transfer: from a substitute of another architecture, no access to the secret model
# --------------------------------------------------------------------------------------------------


def test_transfer_beats_random_sign_noise_in_black_box() -> None:
    _, _, x, y = digits()
    model = reference_model()
    target = HarnessTarget(model, substitute_model(), "black-box")
    x_adv = make_attack("transfer").run(target, x, y, budget())
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()
    noisy = (x + EPS["linf"] * noise).clamp(0, 1)
    assert target.queries_used == 0
    assert accuracy(model, x_adv, y) < accuracy(model, noisy, y) - 0.4


# --------------------------------------------------------------------------------------------------
# Defenses
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def undefended() -> nn.Module:
    ctx, _ = train_context(epochs=20)
    return make_defense("undefended").train(ctx)


@pytest.fixture(scope="module")
def fgsm_trained() -> nn.Module:
    ctx, _ = train_context(epochs=20)
    return make_defense("fgsm-adv-training").train(ctx)


def fgsm_accuracy(model: nn.Module, eps: float = 0.2) -> float:
    """Accuracy of ``model`` on the digits test split under white-box FGSM at ``eps``."""
    _, _, x, y = digits()
    x_adv = make_attack("fgsm").run(HarnessTarget(model, model), x, y, Budget("linf", eps, 0, torch.Generator()))
    return accuracy(model, x_adv, y)


def test_undefended_learns_digits(undefended: nn.Module) -> None:
    _, _, x, y = digits()
    assert not undefended.training
    assert accuracy(undefended, x, y) > 0.9


def test_fgsm_adversarial_training_is_more_robust_and_still_accurate(
    undefended: nn.Module, fgsm_trained: nn.Module
) -> None:
    _, _, x, y = digits()
    assert not fgsm_trained.training
    assert accuracy(fgsm_trained, x, y) > 0.85
    assert fgsm_accuracy(fgsm_trained) > fgsm_accuracy(undefended) + 0.2


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_stops_when_its_time_budget_is_spent(name: str) -> None:
    ctx, lines = train_context(epochs=50, time_budget=0.0)
    model = make_defense(name).train(ctx)
    assert not model.training
    assert any("time budget" in line for line in lines)
