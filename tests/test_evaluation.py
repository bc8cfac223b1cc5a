"""Evaluation data no plugin can look up (a secret distortion, or a private set) and the pixel grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from arena import Budget, TrainContext
from arena.contract import plugins
from arena.rules import evaluation
from arena.rules.data import bundled_data_files, load_digits
from arena.rules.distortions import DISTORTIONS, distort
from arena.rules.neighbors import breakable
from arena.rules.referee import TOLERANCE, project, quantize, quantize_within
from arena.rules.tracks import TRACKS, TrackError

DIGITS = TRACKS["digits"]
SECRET = b"a secret"


def on_grid(x: torch.Tensor, levels: int) -> bool:
    steps = x * (levels - 1)
    return bool(((steps - steps.round()).abs() < 1e-4).all())


# --------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.2), ("linf", 3 / 16), ("l2", 1.0), ("l0", 3)])
@pytest.mark.parametrize("levels", [17, 256])
def test_quantised_adversarial_images_stay_on_the_grid_and_inside_the_budget(
    norm: str, eps: float, levels: int
) -> None:
    generator = torch.Generator().manual_seed(0)
    x = quantize(torch.rand(400, 1, 8, 8, generator=generator), levels)
    raw = x + torch.randn(x.shape, generator=generator) * 0.3
    x_adv, _ = project(raw, x, norm, eps)
    q = quantize_within(x_adv, x, levels, norm, eps)
    assert on_grid(q, levels) and q.min() >= 0 and q.max() <= 1
    delta = (q - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps + TOLERANCE
    elif norm == "l2":
        assert delta.norm(dim=1).max() <= eps + TOLERANCE
    else:
        assert ((delta.abs() > TOLERANCE).sum(1) <= ((x_adv - x).flatten(1).abs() > TOLERANCE).sum(1)).all()
    # rounding to the nearest level is kept wherever it stays inside: at most half a step from the projection
    assert (q - x_adv).abs().max() <= 1 / (levels - 1) + 1e-6


def test_an_image_on_the_grid_is_left_alone() -> None:
    x = quantize(torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(1)), 17)
    assert torch.equal(quantize(x, 17), x)
    assert torch.equal(quantize_within(x, x, 17, "linf", 0.2), x)


def test_a_perturbation_smaller_than_half_a_level_vanishes() -> None:
    x = quantize(torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2)), 17)
    nudged = (x + 0.02).clamp(0, 1)
    assert torch.equal(quantize_within(nudged, x, 17, "linf", 0.2), x)


# --------------------------------------------------------------------------------------------------
# The evaluation set
# --------------------------------------------------------------------------------------------------


def test_the_transformed_set_is_fixed_by_the_secret_and_secret_without_it(tmp_path: Path) -> None:
    first, again = evaluation.build(DIGITS, tmp_path, SECRET), evaluation.build(DIGITS, tmp_path, SECRET)
    other = evaluation.build(DIGITS, tmp_path, b"another secret")
    assert torch.equal(first.x, again.x) and torch.equal(first.index, again.index)
    assert not torch.equal(first.index, other.index)
    assert len(first.y) == DIGITS.eval_size and on_grid(first.x, DIGITS.levels)
    data = load_digits()
    assert torch.equal(first.y, torch.from_numpy(data.y_test[first.index.numpy()]))
    assert (first.targets != first.y).all()


def test_no_transformed_image_can_be_looked_up_in_the_public_split(tmp_path: Path) -> None:
    """Within the budget of an evaluation image lies its public original for only a few of them."""
    built = evaluation.build(DIGITS, tmp_path, SECRET)
    public = torch.tensor(load_digits().x_test).flatten(1)
    distance = torch.cdist(built.x.flatten(1), public, p=float("inf")).min(dim=1).values
    assert (distance <= DIGITS.eps + 1e-6).float().mean() < 0.02
    untouched = (built.x.flatten(1) - public[built.index]).abs().amax(dim=1) < 1e-6
    assert untouched.float().mean() < 0.01


def test_an_image_is_drawn_again_only_where_a_lookup_of_the_public_originals_holds_its_ball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: of 16 draws, each image keeps the first whose budget ball no lookup of the public images holds."""
    chosen = evaluation.build(DIGITS, tmp_path, SECRET)
    monkeypatch.setattr(evaluation, "DRAWS", 1)
    first = evaluation.build(DIGITS, tmp_path, SECRET)
    data = load_digits()
    public = (
        torch.tensor(np.concatenate([data.x_train, data.x_test])),
        torch.tensor(np.concatenate([data.y_train, data.y_test])),
    )
    budget = Budget(DIGITS.norm, DIGITS.eps, 0, torch.Generator(), levels=DIGITS.levels)
    held = ~breakable(first.x, first.y, *public, budget)
    assert torch.equal(chosen.x[~held], first.x[~held]) and torch.equal(chosen.index, first.index)
    assert 0.05 < held.float().mean() < 0.8
    assert (~breakable(chosen.x, chosen.y, *public, budget)).float().mean() < held.float().mean() / 2


def test_the_search_keeps_the_least_distorted_unheld_draw_as_judging_every_draw_would() -> None:
    """The search stops at each held image's first unheld draw, least distorted first: the choice of judging all."""
    data, chosen = load_digits(), torch.arange(0, 480, 2)
    budget = Budget(DIGITS.norm, DIGITS.eps, 0, torch.Generator(), levels=DIGITS.levels)
    draws = {
        seed: distort(torch.tensor(data.x_test), torch.Generator().manual_seed(seed), DISTORTIONS["digits"], chosen,
                      DIGITS.levels, DIGITS.eps)
        for seed in range(8)
    }  # fmt: skip
    found = evaluation._unheld(DIGITS, data, draws[0].clone(), chosen, list(range(1, 8)), draws.__getitem__)
    public = tuple(
        torch.tensor(np.concatenate(pair)) for pair in ((data.x_train, data.x_test), (data.y_train, data.y_test))
    )
    y, originals = torch.tensor(data.y_test[chosen]), torch.tensor(data.x_test[chosen])
    expected, best = draws[0].clone(), torch.full((len(chosen),), float("inf"))
    held = ~breakable(draws[0], y, *public, budget)
    for seed in range(1, 8):
        moved = (draws[seed] - originals).flatten(1).norm(dim=1)
        better = held & breakable(draws[seed], y, *public, budget) & (moved < best)
        expected[better], best[better] = draws[seed][better], moved[better]
    assert torch.equal(found, expected)
    assert held.sum() > 20 and (found != draws[0]).flatten(1).any(dim=1).sum() > 10  # the search had work to do


def test_mnist_images_move_beyond_the_budget_too(mnist_dir: Path) -> None:
    track = dataclasses.replace(TRACKS["mnist-linf"], eval_size=200)
    built = evaluation.build(track, mnist_dir, SECRET)
    originals = torch.from_numpy(np.array(track.load(mnist_dir).x_test))[built.index]
    assert on_grid(built.x, 256)
    assert ((built.x - originals).flatten(1).abs().amax(dim=1) <= track.eps).float().mean() < 0.02


def test_augmentation_draws_fresh_images_of_the_evaluations_family() -> None:
    """``TrainContext.augment`` moves training images as far as the evaluation's, on the grid, anew each call."""
    digits = load_digits()
    x = torch.tensor(digits.x_train[:200])
    ctx = TrainContext(
        track="digits", num_classes=10, input_shape=(1, 8, 8), norm="linf", eps=DIGITS.eps, x=x,
        y=torch.tensor(digits.y_train[:200]), make_model=DIGITS.make_reference, device=torch.device("cpu"),
        seed=3, time_budget=1.0, epochs=1, levels=17, distortion=DISTORTIONS["digits"],
    )  # fmt: skip
    first, second = ctx.augment(x), ctx.augment(x)
    assert on_grid(first, 17) and not torch.equal(first, second)
    moved = (first - x).flatten(1).abs().amax(dim=1)
    assert (moved > DIGITS.eps).float().mean() > 0.98
    batch, _ = next(ctx.batches(64, augment=True))
    assert on_grid(batch, 17) and not any(torch.equal(image, original) for image in batch for original in x)
    assert torch.equal(dataclasses.replace(ctx, distortion=None).augment(x), x)


def test_a_smaller_set_is_a_subset_of_a_larger_one_with_the_same_images(tmp_path: Path) -> None:
    large = evaluation.build(DIGITS, tmp_path, SECRET)
    small = evaluation.build(dataclasses.replace(DIGITS, eval_size=50), tmp_path, SECRET)
    position = {int(i): k for k, i in enumerate(large.index)}
    rows = [position[int(i)] for i in small.index]
    assert torch.equal(large.x[rows], small.x) and torch.equal(large.targets[rows], small.targets)


def test_the_public_set_is_the_published_split(tmp_path: Path) -> None:
    built = evaluation.build(dataclasses.replace(DIGITS, evaluation="public"), tmp_path, SECRET)
    x, y, index, targets = DIGITS.eval_set(tmp_path)
    assert torch.equal(built.x, x) and torch.equal(built.index, index) and torch.equal(built.targets, targets)


def test_a_set_survives_packing_exactly(tmp_path: Path) -> None:
    built = evaluation.build(DIGITS, tmp_path, SECRET)
    back = evaluation.EvalSet.unpack(built.pack(DIGITS.levels))
    for name in ("x", "y", "index", "targets"):
        assert torch.equal(getattr(back, name), getattr(built, name))


def test_a_private_set_is_read_checked_and_drawn_from(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    path = tmp_path / "private.npz"
    np.savez(path, x=rng.randint(0, 17, size=(80, 8, 8)).astype(np.uint8), y=rng.randint(0, 10, size=80))
    track = dataclasses.replace(DIGITS, evaluation="private", eval_path=str(path), eval_size=30)
    built = evaluation.build(track, tmp_path, SECRET)
    with np.load(path) as npz:
        expected = torch.from_numpy(npz["x"][built.index.numpy()].astype(np.float32) / 16)[:, None]
    assert torch.equal(built.x, expected) and len(built.y) == 30 and (built.targets != built.y).all()
    np.savez(path, x=np.zeros((5, 28, 28), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(TrackError, match=r"holds images \(5, 1, 28, 28\)"):
        evaluation.build(track, tmp_path, SECRET)
    with pytest.raises(TrackError, match="cannot read its private evaluation set"):
        evaluation.build(dataclasses.replace(track, eval_path=str(tmp_path / "absent.npz")), tmp_path, SECRET)


def test_track_fields_of_the_evaluation_are_checked() -> None:
    assert TRACKS["digits"].levels == 17 and TRACKS["mnist-linf"].levels == 256
    with pytest.raises(TrackError, match="evaluation 'secret' not in"):
        dataclasses.replace(DIGITS, evaluation="secret")
    with pytest.raises(TrackError, match="a private evaluation names its file"):
        dataclasses.replace(DIGITS, evaluation="private")
    with pytest.raises(TrackError, match="levels must be at least 2"):
        dataclasses.replace(DIGITS, levels=1)


# --------------------------------------------------------------------------------------------------
# Limits and hidden data
# --------------------------------------------------------------------------------------------------


def test_a_plugin_folder_cannot_carry_a_data_set(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "plugin.toml").write_text('name = "big"\nkind = "defense"\nteam = "t"\nsummary = "s"\n')
    (folder / "big.py").write_text("")
    (folder / "mnist-test.bin").write_bytes(np.random.RandomState(0).bytes(plugins.MAX_PLUGIN_BYTES))
    assert any("a plugin may hold 1048576 at most" in error for error in plugins.read_folder(folder).errors)


def test_scikit_learns_bundled_digits_are_among_the_hidden_files() -> None:
    names = {path.name for path in bundled_data_files()}
    assert "digits.csv.gz" in names and not any(name.endswith(".py") for name in names)
