"""The built-in defenses: each trains, declares what it does (randomized, reject, BPDA) and survives the arena.

Fast tests train each defense briefly in-process on scikit-learn's digits (see ``plugin_harness``); the slow
ones train every defense through the arena's own sandbox on the ``digits`` track and check the clean floor
and what each defense stops.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import models
import pytest
import torch
import torch.nn.functional as F
from plugin_harness import PLUGINS, accuracy, digits, load_manifest, train_context
from torch import nn

from arena import Defense
from arena.contract import plugins
from arena.play.training import check_model, load_model, save_model
from arena.rules.referee import classify, judge
from arena.rules.tracks import TRACKS
from arena.store import Database

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = sorted(folder.name for folder in (PLUGINS / "defenses").iterdir() if (folder / "plugin.toml").is_file())
RANDOMIZED = {"magnet", "defense-gan"}
#: epochs and parameters that train each defense in a second or two on digits (the manifests' train it properly)
QUICK: dict[str, tuple[int, dict[str, object]]] = {
    "ensemble-adv-training": (5, {"static_share": 0.2}),
    "distillation": (20, {}),
    "magnet": (10, {}),
    "defense-gan": (5, {"gan_epoch_factor": 4.0, "search_steps": 10, "restarts": 2}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arena's plugin cache for this module's tests."""
    return tmp_path_factory.mktemp("plugin-cache")


def load(name: str, cache: Path) -> type[Defense]:
    """The class of the built-in defense ``name``, imported by the arena (so its modules can be pickled)."""
    cls = plugins.load(plugins.read_folder(PLUGINS / "defenses" / name), cache).cls
    assert issubclass(cls, Defense)
    return cls


def build(name: str, cache: Path, **overrides: object) -> Defense:
    """The built-in defense ``name`` with its manifest's parameters, some of them overridden."""
    params = load_manifest(PLUGINS / "defenses" / name).get("params", {})
    return load(name, cache)(**(params | overrides))


@pytest.fixture(scope="module")
def quick(cache: Path) -> dict[str, nn.Module]:
    """Every defense, trained briefly on digits in this process (seconds for all)."""
    trained = {}
    for name in DEFENSES:
        epochs, overrides = QUICK.get(name, (5, {}))
        ctx, _ = train_context(epochs=epochs, seed=1)
        trained[name] = build(name, cache, **overrides).train(ctx)
    return trained


# --------------------------------------------------------------------------------------------------
# Declarations and documentation
# --------------------------------------------------------------------------------------------------


def test_the_course_defenses_are_all_built_in() -> None:
    course = {"undefended", "fgsm-adv-training", "pgd-adv-training", "ensemble-adv-training", "distillation"}
    assert course | RANDOMIZED <= set(DEFENSES)


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_declares_randomized_as_documented_and_cites_its_paper(name: str, cache: Path) -> None:
    cls = load(name, cache)
    assert cls.randomized is (name in RANDOMIZED)
    assert "https://arxiv.org/" in (cls.__doc__ or "")
    manifest = load_manifest(PLUGINS / "defenses" / name)
    assert manifest["name"] == name and manifest["kind"] == "defense"
    params = manifest.get("params", {})
    assert cls().params == cls(**params).params == params, "the manifest states the parameters, the class takes them"


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_has_a_section_in_the_docs_and_the_readme(name: str) -> None:
    guide = (ROOT / "docs" / "defenses.md").read_text(encoding="utf-8")
    section = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", guide, re.MULTILINE | re.DOTALL)
    assert section is not None, f"docs/defenses.md has no section '## {name}'"
    for field in ("Paper", "Parameters", "Randomized", "White-box", "Rejects"):
        assert f"**{field}.**" in section.group(1), f"the section of {name} has no **{field}.** paragraph"
    for param in load_manifest(PLUGINS / "defenses" / name).get("params", {}):
        assert f"`{param}`" in section.group(1), f"the section of {name} does not document `{param}`"
    assert f"`{name}`" in (ROOT / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Training: eval mode, time budget, artifacts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_stops_when_its_time_budget_is_spent(name: str, cache: Path) -> None:
    ctx, lines = train_context(epochs=50, time_budget=0.0)
    model = build(name, cache).train(ctx)
    assert not model.training
    assert any("time budget" in line for line in lines)
    check_model(model, ctx.x[:8], ctx.num_classes)


@pytest.mark.parametrize("norm", ["l2", "l0"])
@pytest.mark.parametrize("name", DEFENSES)
def test_defense_trains_under_every_norm(name: str, norm: str, cache: Path) -> None:
    ctx, _ = train_context(epochs=1)
    ctx = dataclasses.replace(ctx, norm=norm, eps={"l2": 1.0, "l0": 3.0}[norm])
    model = build(name, cache, **QUICK.get(name, (1, {}))[1]).train(ctx)
    check_model(model, ctx.x[:8], ctx.num_classes)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.2), ("l2", 1.0), ("l0", 3.0)])
def test_training_examples_stay_within_the_budget(
    norm: str, eps: float, quick: dict[str, nn.Module], cache: Path
) -> None:
    ctx, _ = train_context(epochs=1)
    ctx = dataclasses.replace(ctx, norm=norm, eps=eps)
    x, y = ctx.x[:64], ctx.y[:64]
    model = quick["undefended"]
    pgd_module = sys.modules[load("pgd-adv-training", cache).__module__]
    ensemble_module = sys.modules[load("ensemble-adv-training", cache).__module__]
    for x_adv in (
        pgd_module.pgd(model, x, y, norm, eps, 5, 2.5 * eps / 5, ctx),
        ensemble_module.fgsm(model, x, y, norm, eps),
    ):
        delta = (x_adv - x).flatten(1)
        size = {"linf": delta.abs().amax(dim=1), "l2": delta.norm(dim=1), "l0": (delta.abs() > 0).sum(dim=1).float()}
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert size[norm].max() <= eps + 1e-5 and (size[norm] > 0).float().mean() > 0.5
        assert accuracy(model, x_adv, y) < accuracy(model, x, y)


@pytest.mark.parametrize("name", DEFENSES)
def test_trained_defense_is_saved_and_loaded_whole(name: str, quick: dict[str, nn.Module], cache: Path) -> None:
    model = quick[name]
    _, _, x, _ = digits()
    x = x[:64]
    check_model(model, x, 10)
    source = plugins.read_folder(PLUGINS / "defenses" / name)
    loaded = load_model(save_model(model), torch.device("cpu"), source, cache)
    assert type(loaded).__name__ == type(model).__name__ and not loaded.training
    with torch.no_grad():
        torch.manual_seed(5)
        before = model(x)
        torch.manual_seed(5)
        after = loaded(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert hasattr(loaded, "reject") == (name == "magnet")


# --------------------------------------------------------------------------------------------------
# Randomized defenses and their BPDA stand-ins
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_randomized_defense_draws_anew_on_each_call_from_the_global_generator(
    name: str, quick: dict[str, nn.Module]
) -> None:
    model = quick[name]
    _, _, x, _ = digits()
    with torch.no_grad():
        torch.manual_seed(0)
        first = [model(x) for _ in range(4)]
        torch.manual_seed(0)
        again = [model(x) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(first[0], other) for other in first[1:])


def test_magnet_gradient_is_that_of_the_mean_reconstruction(quick: dict[str, nn.Module]) -> None:
    model = quick["magnet"]
    model.zero_grad(set_to_none=True)
    _, _, x, y = digits()
    x, y = x[:32], y[:32]
    torch.manual_seed(4)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    torch.manual_seed(4)
    drawn = model.autoencoders[int(torch.randint(len(model.autoencoders), ()))](x).requires_grad_(True)
    (outer,) = torch.autograd.grad(F.cross_entropy(model.classifier(drawn), y), drawn)
    x_mean = x.clone().requires_grad_(True)
    mean = torch.stack([autoencoder(x_mean) for autoencoder in model.autoencoders]).mean(dim=0)
    (expected,) = torch.autograd.grad(mean, x_mean, grad_outputs=outer)
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, expected, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_defense_gan_gradient_passes_straight_through_the_projection(quick: dict[str, nn.Module]) -> None:
    model = quick["defense-gan"]
    model.zero_grad(set_to_none=True)
    _, _, x, y = digits()
    x, y = x[:32], y[:32]
    torch.manual_seed(3)
    projected = model.project(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(model.classifier(projected), y), projected)
    torch.manual_seed(3)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
    assert grad.abs().sum() > 0
    assert torch.allclose(grad, expected, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_defense_gan_projects_onto_the_generators_range(quick: dict[str, nn.Module]) -> None:
    model = quick["defense-gan"]
    _, _, x, _ = digits()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        digit_error = (model.project(x) - x).pow(2).flatten(1).sum(dim=1).mean()
        noise_error = (model.project(noise) - noise).pow(2).flatten(1).sum(dim=1).mean()
    assert digit_error < noise_error / 2


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------


def test_magnet_rejects_noise_and_keeps_clean_digits(quick: dict[str, nn.Module]) -> None:
    model = quick["magnet"]
    _, _, x, _ = digits()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert model.reject(noise).float().mean() > 0.95
    assert model.reject(x).float().mean() < 0.05
    errors = model.reconstruction_errors(x)
    assert errors.shape == (len(x), len(model.autoencoders), 2) and model.thresholds.shape == errors.shape[1:]


def test_a_rejected_input_counts_for_magnet_in_the_referee(quick: dict[str, nn.Module]) -> None:
    model = quick["magnet"]
    _, _, x, y = digits()
    x, y = x[:100], y[:100]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    clean, adv = classify(model, x, draws=3), classify(model, noise, draws=3)
    records = judge(x, y, noise, torch.zeros(len(x), dtype=torch.bool), clean, adv, None)
    assert records["adv_rejected"].mean() > 0.95
    assert records["survived"].sum() >= (records["clean_correct"] & records["adv_rejected"]).sum()


# --------------------------------------------------------------------------------------------------
# Distillation: what it masks and what it does not
# --------------------------------------------------------------------------------------------------


def test_distillation_masks_the_cross_entropy_gradient_but_not_the_logits(quick: dict[str, nn.Module]) -> None:
    model = quick["distillation"]
    _, _, x, y = digits()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, retain_graph=True)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - runner_up
    (margin_grad,) = torch.autograd.grad(margin.sum(), x)
    masked = ce_grad.flatten(1).abs().amax(dim=1) == 0
    assert masked.float().mean() > 0.5
    assert (margin_grad.flatten(1).abs().amax(dim=1) > 0).all()


# --------------------------------------------------------------------------------------------------
# The real thing: every defense trained by the arena on the digits track
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena_trained(cache: Path, tmp_path_factory: pytest.TempPathFactory, model_store: Database) -> dict[str, nn.Module]:
    """Every defense trained through ``arena.play.training`` (sandbox, artifact) on ``digits`` as a round under the
    suite's secret trains it (the suite's rounds share the models, :func:`conftest.shared_models`), then loaded back."""
    track, home = TRACKS["digits"], tmp_path_factory.mktemp("arena")  # digits ship with scikit-learn
    trained = {}
    for name in DEFENSES:
        source = plugins.read_folder(PLUGINS / "defenses" / name)
        artifact = models.defense(model_store, source, track, home, cache)
        trained[name] = load_model(artifact, torch.device("cpu"), source, cache)
    return trained


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20) -> torch.Tensor:
    """A reference L-inf PGD on the cross-entropy (random start, steps of eps / 4), for the tests' figures."""
    generator = torch.Generator().manual_seed(0)
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x + (x_adv.detach() + eps / 4 * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, draws: int) -> float:
    """The referee's robust accuracy of ``model`` (rejections and draws included)."""
    clean, adv = classify(model, x, draws), classify(model, x_adv, draws)
    return float(judge(x, y, x_adv, torch.zeros(len(x), dtype=torch.bool), clean, adv, None)["survived"].mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFENSES)
def test_defense_trained_by_the_arena_reaches_the_clean_floor(name: str, arena_trained: dict[str, nn.Module]) -> None:
    track = TRACKS["digits"]
    x, y, _, _ = track.eval_set(Path())
    draws = track.draws if name in RANDOMIZED else 1
    clean = classify(arena_trained[name], x, draws)
    records = judge(x, y, x, torch.zeros(len(x), dtype=torch.bool), clean, clean, None)
    assert records["clean_correct"].mean() >= track.clean_floor


@pytest.mark.slow
def test_adversarial_training_stops_more_of_pgd_than_the_baseline(arena_trained: dict[str, nn.Module]) -> None:
    track = TRACKS["digits"]
    x, y, _, _ = track.eval_set(Path())
    robust = {
        name: robust_accuracy(arena_trained[name], x, y, pgd(arena_trained[name], x, y, track.eps), 1)
        for name in ("undefended", "fgsm-adv-training", "pgd-adv-training", "ensemble-adv-training")
    }
    assert robust["undefended"] < 0.2
    assert robust["pgd-adv-training"] > robust["undefended"] + 0.25
    assert robust["pgd-adv-training"] >= max(robust.values()) - 0.05


@pytest.mark.slow
def test_purifiers_stop_examples_made_on_another_model(arena_trained: dict[str, nn.Module]) -> None:
    track = TRACKS["digits"]
    x, y, _, _ = track.eval_set(Path())
    x_adv = pgd(arena_trained["undefended"], x, y, track.eps)  # white-box for the baseline, transferred to the others
    baseline = robust_accuracy(arena_trained["undefended"], x, y, x_adv, 1)
    assert baseline < 0.1
    for name in sorted(RANDOMIZED):
        assert robust_accuracy(arena_trained[name], x, y, x_adv, track.draws) > baseline + 0.15, name
