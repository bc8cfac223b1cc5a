"""The course's attacks as built-in plugins: contract, budget, determinism and strength, in-process on digits.

Every attack folder under ``plugins/attacks`` is checked here (see plugin_harness for the in-process target);
the cross-checks against torchattacks are in test_attack_crosscheck.py, real matches in test_attack_matches.py.
"""

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
    load_plugin,
    make_attack,
    reference_model,
    substitute_model,
)
from torch import nn

from arena import Attack, Budget, ThreatModelError, neighbor_points
from arena.rules.referee import perturbation_norms, project
from arena.rules.tracks import TRACKS, Track, TrackError

ATTACKS = sorted(folder.name for folder in (PLUGINS / "attacks").iterdir() if (folder / "plugin.toml").is_file())
#: the attacks the course teaches (DESIGN.md, section 9)
COURSE = {
    "fgsm",
    "fgsm-targeted",
    "ifgsm",
    "rand-fgsm",
    "pgd",
    "cw-l2",
    "deepfool",
    "one-pixel",
    "universal",
    "simba",
    "transfer",
}
EPS = {"linf": 0.2, "l2": 1.0, "l0": 3}
MAX_QUERIES = 100
N = 120


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_attack_of_the_course_ships_as_a_plugin() -> None:
    assert set(ATTACKS) >= COURSE


def targets_for(y: torch.Tensor) -> torch.Tensor:
    """A fixed target label per sample, never the true one (as the arena chooses them)."""
    shift = torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(7))
    return (y + shift) % 10


def budget(norm: str, seed: int = 0, eps: float | None = None, y: torch.Tensor | None = None) -> Budget:
    """A digits-sized budget with a freshly seeded generator; targets when ``y`` is given."""
    value = EPS[norm] if eps is None else eps
    return Budget(norm, value, MAX_QUERIES, torch.Generator().manual_seed(seed), None if y is None else targets_for(y))


def play(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: str,
    seed: int = 0,
    eps: float | None = None,
    model: nn.Module | None = None,
) -> tuple[torch.Tensor, HarnessTarget]:
    """Run ``attack`` under the first threat model it plays; return its output and the target it saw."""
    model = reference_model() if model is None else model
    target = HarnessTarget(model, substitute_model(), attack.threats[0], MAX_QUERIES * len(x))
    x_adv = attack.run(target, x, y, budget(norm, seed, eps, y if attack.targeted else None))
    return x_adv, target


def sizes(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of the perturbation in ``norm`` (for l0: the number of changed values)."""
    delta = (x_adv - x).flatten(1)
    if norm == "linf":
        return delta.abs().amax(dim=1)
    if norm == "l2":
        return delta.norm(dim=1)
    return (delta.abs() > 1e-5).sum(dim=1).float()


def held_out(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits of the held-out split."""
    _, _, x, y = digits()
    return x[:n], y[:n]


# --------------------------------------------------------------------------------------------------
# Every attack: manifest, docstring, budget, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATTACKS)
def test_manifest_agrees_with_the_class_and_the_docstring_gives_formula_and_paper(name: str) -> None:
    folder = PLUGINS / "attacks" / name
    manifest = load_manifest(folder)
    assert all(manifest.get(field) for field in REQUIRED_FIELDS)
    assert manifest["name"] == name and manifest["kind"] == "attack"
    module = load_module(folder)
    assert not hasattr(module, "arena_defenses")
    (cls,) = module.arena_attacks()
    assert issubclass(cls, Attack)
    assert (list(cls.norms), list(cls.threats), cls.targeted) == (
        manifest["norms"],
        manifest["threats"],
        manifest["targeted"],
    )
    doc = cls.__doc__ or ""
    assert ".. math::" in doc and re.search(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", doc), doc
    params = manifest.get("params", {})
    assert cls().params == params, "the manifest's params are the class's, stated nowhere else"
    for key in params:
        assert f"{key}:" in doc, f"the docstring documents the argument {key}"
    assert cls(**params).params == params


def cases() -> list[tuple[str, str]]:
    """Every (attack, norm) pair the attacks declare."""
    return [(name, norm) for name in ATTACKS for norm in load_plugin("attack", name).norms]


@pytest.mark.parametrize(("name", "norm"), cases())
def test_output_is_well_formed_and_within_the_budget_before_the_referee(name: str, norm: str) -> None:
    x, y = held_out()
    x_adv, target = play(make_attack(name), x, y, norm)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    size = sizes(x_adv, x, norm)
    assert size.max() <= EPS[norm] + 1e-5
    assert (size > 0).any()
    assert target.queries_used <= MAX_QUERIES * len(x)
    assert accuracy(reference_model(), x_adv, y) < accuracy(reference_model(), x, y)


@pytest.mark.parametrize(("name", "norm"), [(name, load_plugin("attack", name).norms[0]) for name in ATTACKS])
def test_attack_is_deterministic_under_a_seed_and_leaves_the_models_alone(name: str, norm: str) -> None:
    x, y = held_out(60)
    model, substitute = reference_model(), substitute_model()
    before = [p.detach().clone() for p in (*model.parameters(), *substitute.parameters())]
    first, _ = play(make_attack(name), x, y, norm, seed=3)
    second, _ = play(make_attack(name), x, y, norm, seed=3)
    assert torch.equal(first, second)
    after = [p.detach() for p in (*model.parameters(), *substitute.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in (*model.parameters(), *substitute.parameters()))
    assert not model.training and not substitute.training


@pytest.mark.parametrize("name", [name for name in ATTACKS if "black-box" not in load_plugin("attack", name).threats])
def test_white_box_attacks_refuse_to_play_black_box(name: str) -> None:
    x, y = held_out(4)
    attack = make_attack(name)
    target = HarnessTarget(reference_model(), substitute_model(), "black-box", MAX_QUERIES * len(x))
    with pytest.raises(ThreatModelError):
        attack.run(target, x, y, budget(attack.norms[0], y=y if attack.targeted else None))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("pgd", {"steps": 0}),
        ("pgd", {"eot": 0}),
        ("ifgsm", {"rel_step": 0.0}),
        ("rand-fgsm", {"rel_alpha": 1.0}),
        ("cw-l2", {"binary_steps": 0}),
        ("deepfool", {"candidates": 1}),
        ("one-pixel", {"popsize": 3}),
        ("universal", {"fooling": 0.0}),
        ("neighbors", {"rel_step": 0.0}),
    ],
)
def test_bad_parameters_fail_at_construction(name: str, params: dict) -> None:
    with pytest.raises(ValueError, match="|".join(params)):
        load_plugin("attack", name)(**params)


# --------------------------------------------------------------------------------------------------
# Strength
# --------------------------------------------------------------------------------------------------


def test_targeted_fgsm_hits_its_targets_far_more_often_than_chance() -> None:
    _, _, x, y = digits()
    x_adv, _ = play(make_attack("fgsm-targeted"), x, y, "linf")
    with torch.no_grad():
        hit = (reference_model()(x_adv).argmax(dim=1) == targets_for(y)).float().mean().item()
    assert hit > 0.35, "chance is 1/9 over the wrong classes"


def test_targeted_fgsm_needs_targets() -> None:
    x, y = held_out(4)
    with pytest.raises(ValueError, match="budget.targets"):
        make_attack("fgsm-targeted").run(HarnessTarget(reference_model(), substitute_model()), x, y, budget("linf"))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["ifgsm", "pgd"])
def test_iterative_attacks_are_at_least_as_strong_as_fgsm_at_the_same_eps(name: str, norm: str) -> None:
    _, _, x, y = digits()
    eps = EPS[norm] / 2  # where FGSM leaves something to improve on
    model = reference_model()
    fgsm, _ = play(make_attack("fgsm"), x, y, norm, eps=eps)
    iterative, _ = play(make_attack(name), x, y, norm, eps=eps)
    assert accuracy(model, iterative, y) <= accuracy(model, fgsm, y) - 0.02


def broken(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which samples the model misclassifies."""
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) != y


def test_pgd_early_stopping_and_restarts_only_add_broken_samples() -> None:
    _, _, x, y = digits()
    model, pgd = reference_model(), load_plugin("attack", "pgd")
    plain, _ = play(pgd(steps=10, early_stop=False), x, y, "linf", eps=0.1)
    early, _ = play(pgd(steps=10), x, y, "linf", eps=0.1)
    restarted, _ = play(pgd(steps=10, restarts=3), x, y, "linf", eps=0.1)
    assert torch.all(broken(model, early, y) >= broken(model, plain, y))
    assert torch.all(broken(model, restarted, y) >= broken(model, early, y))
    assert broken(model, restarted, y).sum() > broken(model, plain, y).sum()


class NoisyModel(nn.Module):
    """A randomized defense: the model sees its input plus fresh Gaussian noise at every forward pass."""

    def __init__(self, model: nn.Module, sigma: float = 0.3) -> None:
        super().__init__()
        self.model, self.sigma, self.calls = model, sigma, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x + self.sigma * torch.randn_like(x))


def test_pgd_eot_averages_over_forward_passes_and_beats_a_randomized_model_more_often() -> None:
    _, _, x, y = digits()
    model = NoisyModel(reference_model()).eval()
    pgd = load_plugin("attack", "pgd")
    expected_accuracy = {}
    for eot in (1, 16):
        torch.manual_seed(0)
        model.calls = 0
        x_adv, _ = play(pgd(steps=10, eot=eot, early_stop=False), x, y, "linf", eps=0.15, model=model)
        assert model.calls == 10 * eot
        torch.manual_seed(1)
        expected_accuracy[eot] = sum(accuracy(model, x_adv, y) for _ in range(20)) / 20
    assert expected_accuracy[16] < expected_accuracy[1] - 0.015


def test_deepfool_finds_small_perturbations_that_just_cross_the_boundary() -> None:
    _, _, x, y = digits()
    model = reference_model()
    x_adv, _ = play(make_attack("deepfool"), x, y, "l2", eps=100.0)
    fooled = broken(model, x_adv, y) & ~broken(model, x, y)
    assert fooled.float().mean() > 0.9
    halfway = x + 0.5 * (x_adv - x)
    assert (~broken(model, halfway[fooled], y[fooled])).float().mean() > 0.7, "half the step stays on the near side"
    assert sizes(x_adv, x, "l2")[fooled].median() < 1.0


def margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The best wrong logit minus the true one (positive: misclassified)."""
    with torch.no_grad():
        logits = model(x)
    return logits.scatter(1, y[:, None], -torch.inf).amax(dim=1) - logits.gather(1, y[:, None]).squeeze(1)


def test_cw_reaches_its_confidence_margin_and_the_binary_search_shrinks_the_perturbation() -> None:
    x, y = held_out(200)
    model, cw = reference_model(), load_plugin("attack", "cw-l2")
    fixed, _ = play(cw(binary_steps=1, steps=50, lr=0.1), x, y, "l2", eps=100.0)
    searched, _ = play(cw(binary_steps=4, steps=50, lr=0.1), x, y, "l2", eps=100.0)
    confident, _ = play(cw(binary_steps=1, steps=50, lr=0.1, confidence=5.0), x, y, "l2", eps=100.0)
    both = broken(model, fixed, y) & broken(model, searched, y) & ~broken(model, x, y)
    assert both.float().mean() > 0.9
    assert sizes(searched, x, "l2")[both].mean() < sizes(fixed, x, "l2")[both].mean()
    changed = sizes(confident, x, "l2") > 0
    assert changed.float().mean() > 0.8
    assert margin(model, confident[changed], y[changed]).min() >= 5.0
    assert sizes(confident, x, "l2")[both & changed].mean() > sizes(fixed, x, "l2")[both & changed].mean()


def test_cw_under_linf_stays_in_the_box_and_breaks_the_model() -> None:
    x, y = held_out(200)
    x_adv, _ = play(make_attack("cw-l2"), x, y, "linf")
    assert sizes(x_adv, x, "linf").max() <= EPS["linf"] + 1e-6
    assert accuracy(reference_model(), x_adv, y) < 0.2


# --------------------------------------------------------------------------------------------------
# Query and transfer attacks
# --------------------------------------------------------------------------------------------------


def test_one_pixel_changes_at_most_eps_pixels_with_queries_only_and_beats_random_pixels() -> None:
    _, _, x, y = digits()
    model = reference_model()
    attack = make_attack("one-pixel")
    target = HarnessTarget(model, substitute_model(), "black-box", MAX_QUERIES * len(x))
    x_adv = attack.run(target, x, y, budget("l0"))
    assert sizes(x_adv, x, "l0").max() <= EPS["l0"]
    assert 0 < target.queries_used <= MAX_QUERIES * len(x)
    generator = torch.Generator().manual_seed(0)
    flat = x.flatten(1).clone()
    for _ in range(EPS["l0"]):  # the same number of random pixels, set to black or white
        where = torch.randint(0, flat.shape[1], (len(x), 1), generator=generator)
        flat.scatter_(1, where, torch.randint(0, 2, (len(x), 1), generator=generator).float())
    assert accuracy(model, x_adv, y) < accuracy(model, flat.view_as(x), y) - 0.3


def test_the_referee_counts_one_pixel_changes_as_the_l0_track_allows() -> None:
    x, y = held_out(150)
    track = TRACKS["digits-l0"]
    target = HarnessTarget(reference_model(), substitute_model(), "black-box", track.max_queries * len(x))
    budget = Budget("l0", track.eps, track.max_queries, torch.Generator().manual_seed(0))
    x_adv = make_attack("one-pixel").run(target, x, y, budget)
    projected, moved = project(x_adv, x, track.norm, track.eps)
    assert not moved.any() and torch.allclose(projected, x_adv, atol=1e-6)
    l0 = perturbation_norms(x_adv, x)["l0"]
    assert l0.max() == track.eps and (l0 > 0).float().mean() > 0.9


@pytest.mark.parametrize("eps", [0, 2.5, -1])
def test_an_l0_track_counts_whole_values(eps: float) -> None:
    with pytest.raises(TrackError, match="eps"):
        Track("bad-l0", dataset="digits", norm="l0", eps=eps)


def test_one_pixel_respects_queries_left_and_spends_nothing_on_misclassified_samples() -> None:
    _, _, x, y = digits()
    model, attack = reference_model(), make_attack("one-pixel")
    target = HarnessTarget(model, substitute_model(), "black-box", 30 * len(x))
    attack.run(target, x, y, budget("l0"))
    assert 0 <= target.queries_left < attack.popsize
    wrong = broken(model, x, y)
    target = HarnessTarget(model, substitute_model(), "black-box", MAX_QUERIES * int(wrong.sum()))
    x_adv = attack.run(target, x[wrong], y[wrong], budget("l0"))
    assert target.queries_used == int(wrong.sum()) and torch.equal(x_adv, x[wrong])


def test_one_pixel_on_colour_images_counts_every_channel_of_a_pixel() -> None:
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    y = model(x).argmax(dim=1).detach()
    target = HarnessTarget(model, model, "black-box", MAX_QUERIES * len(x))
    x_adv = make_attack("one-pixel").run(target, x, y, Budget("l0", 7, MAX_QUERIES, torch.Generator()))
    changed = (x_adv - x).abs().amax(dim=1).flatten(1) > 1e-5  # pixels with any channel changed
    assert changed.sum(dim=1).max() <= 2 and changed.any(), "7 values buy 2 whole pixels of 3 channels"


def test_universal_perturbation_is_one_delta_built_once_on_the_training_split(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, x, y = digits()
    model = reference_model()
    attack = make_attack("universal")
    target = HarnessTarget(model, substitute_model())
    x_adv = attack.run(target, x, y, budget("linf"))
    log = capsys.readouterr().out
    assert "universal: pass 1: v fools" in log
    grey = torch.full((5, 1, 8, 8), 0.5)
    deltas = attack.run(target, grey, y[:5], budget("linf")) - grey
    assert torch.equal(deltas, deltas[:1].expand_as(deltas)) and deltas.abs().max() > 0
    assert capsys.readouterr().out == "", "the second batch reuses the delta"
    assert torch.allclose(x_adv, (x + deltas[:1]).clamp(0, 1))
    noise = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(0)).sign() * EPS["linf"]
    assert accuracy(model, x_adv, y) < accuracy(model, (x + noise).clamp(0, 1), y) - 0.25


def test_universal_in_black_box_builds_on_the_substitute_and_transfers() -> None:
    _, _, x, y = digits()
    model = reference_model()
    target = HarnessTarget(model, substitute_model(), "black-box")
    x_adv = make_attack("universal").run(target, x, y, budget("linf"))
    assert target.queries_used == 0
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.08


class _Lookup(nn.Module):
    """The label of the nearest public image within an L2 ``radius`` of the input, else ``model``'s answer."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.model, self.images, self.labels, self.radius = model, images.flatten(1), labels, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance, nearest = torch.cdist(x.flatten(1), self.images).min(dim=1)
        known = nn.functional.one_hot(self.labels[nearest], 10).float() * 100.0
        return torch.where((distance <= self.radius)[:, None], known, self.model(x))


def test_neighbor_points_leave_the_nearest_original_and_approach_other_classes() -> None:
    _, _, public_x, public_y = digits()
    x, y = public_x[:40], public_y[:40]
    points = neighbor_points(x, y, public_x, public_y, budget("linf"), count=3)
    assert points.shape == (40, 7, *x.shape[1:])
    assert sizes(points.flatten(0, 1), x.repeat_interleave(7, dim=0), "linf").max() <= EPS["linf"] + 1e-6
    away = (points[:, 0] - x).flatten(1).norm(dim=1)  # x is its own nearest original
    assert (away > 1.0).float().mean() > 0.9


class _SketchLookup(nn.Module):
    """The label of the nearest public image when the input's 4 x 4 sketch (average-pooled) lies within an L2
    ``radius`` of its sketch, else ``model``'s answer: a lookup that pools a step at full size away."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, radius: float) -> None:
        super().__init__()
        self.model, self.sketches, self.labels, self.radius = model, _sketch(images), labels, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance, nearest = torch.cdist(_sketch(x), self.sketches).min(dim=1)
        known = nn.functional.one_hot(self.labels[nearest], 10).float() * 100.0
        return torch.where((distance <= self.radius)[:, None], known, self.model(x))


def _sketch(images: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(images, 2).flatten(1)


def test_neighbors_starts_from_the_sketches_too() -> None:
    """Steps found at full size are averaged away in a 4 x 4 sketch: a sketch lookup holds 28 % of the held-out
    images against them; the starts found among the sketches leave its ball for every image."""
    x, y = held_out(60)
    _, _, public_x, public_y = digits()
    lookup = _SketchLookup(reference_model(), public_x, public_y, radius=1.0)
    survived = {}
    for sides in ((), (4,)):
        attack, target = (
            make_attack("neighbors", sketch_sides=sides),
            HarnessTarget(lookup, substitute_model(), "white-box", MAX_QUERIES * len(x)),
        )
        survived[sides] = accuracy(lookup, attack.run(target, x, y, budget("linf")), y)
    assert accuracy(lookup, x, y) == 1.0
    assert survived[()] > 0.2 and survived[(4,)] < 0.05, survived


@pytest.mark.parametrize("threat", ["white-box", "black-box"])
def test_neighbors_leaves_the_flat_ball_of_a_lookup_of_the_public_images(threat: str) -> None:
    """A lookup answers the held-out images themselves; pgd finds no gradient in its ball, neighbors leaves it."""
    x, y = held_out(60)
    _, _, public_x, public_y = digits()
    lookup = _Lookup(reference_model(), public_x, public_y, radius=1.0)
    pgd_target = HarnessTarget(lookup, substitute_model(), "white-box", MAX_QUERIES * len(x))
    after_pgd = accuracy(lookup, make_attack("pgd").run(pgd_target, x, y, budget("linf")), y)
    target = HarnessTarget(lookup, substitute_model(), threat, MAX_QUERIES * len(x))
    x_adv = make_attack("neighbors").run(target, x, y, budget("linf"))
    assert sizes(x_adv, x, "linf").max() <= EPS["linf"] + 1e-6
    assert accuracy(lookup, x, y) == 1.0 and after_pgd > 0.9
    assert accuracy(lookup, x_adv, y) < 0.5
    starts = 2 * 4 + 1 + 4 + 1  # at full size, and among the 4 x 4 sketches
    assert target.queries_used <= (2 * starts if threat == "black-box" else 0) * len(x)
