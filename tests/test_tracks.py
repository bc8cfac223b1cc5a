"""Tracks: built-ins, evaluation subsets and targets, cache-key configs, architectures, tracks.toml."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arena.rules.tracks import (
    ARCHITECTURES,
    TRACKS,
    Track,
    TrackError,
    UnknownTrack,
    get_track,
    load_tracks,
)

DIGITS = TRACKS["digits"]


def test_builtin_tracks() -> None:
    assert set(TRACKS) >= {"digits", "mnist-linf"}
    assert (DIGITS.dataset, DIGITS.norm, DIGITS.eps, DIGITS.input_shape) == ("digits", "linf", 0.2, (1, 8, 8))
    mnist = TRACKS["mnist-linf"]
    assert (mnist.dataset, mnist.norm, mnist.eps, mnist.input_shape) == ("mnist", "linf", 0.3, (1, 28, 28))
    for track in TRACKS.values():
        assert track.num_classes == 10 and track.description
        assert json.loads(json.dumps(track.config())) == track.config()


def test_config_defines_the_track() -> None:
    config = DIGITS.config()
    assert config["eps"] == 0.2 and "description" not in config
    assert dataclasses.replace(DIGITS, eps=0.1).config() != config
    assert dataclasses.replace(DIGITS, description="other words").config() == config
    assert dataclasses.replace(DIGITS, time_limit=300).config() == config, "1 and 1.0 give the same key"


def test_eval_set_is_a_fixed_subset_of_the_test_split(tmp_path: Path) -> None:
    x, y, index, targets = DIGITS.eval_set(tmp_path)
    again = DIGITS.eval_set(tmp_path)
    for first, second in zip((x, y, index, targets), again, strict=True):
        assert torch.equal(first, second)
    assert x.shape == (300, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == index.dtype == targets.dtype == torch.int64
    assert index.unique().numel() == 300 and torch.all(index[1:] > index[:-1])
    test = DIGITS.load(tmp_path)
    assert torch.equal(x, torch.from_numpy(test.x_test[index.numpy()]))
    assert torch.equal(y, torch.from_numpy(test.y_test[index.numpy()]))
    assert torch.all(targets != y) and targets.min() >= 0 and targets.max() < 10
    # pinned: the same samples and targets on every machine
    assert index[:8].tolist() == [1, 2, 4, 5, 6, 7, 8, 10]
    assert targets[:8].tolist() == [2, 7, 4, 4, 0, 4, 6, 1]


def test_smaller_eval_sets_are_subsets_with_the_same_targets(tmp_path: Path) -> None:
    _, _, index, targets = DIGITS.eval_set(tmp_path)
    _, _, small_index, small_targets = dataclasses.replace(DIGITS, eval_size=50).eval_set(tmp_path)
    positions = np.searchsorted(index.numpy(), small_index.numpy())
    assert torch.equal(index[positions], small_index)
    assert torch.equal(targets[positions], small_targets)


def test_eval_set_of_mnist(mnist_dir: Path) -> None:
    track = TRACKS["mnist-linf"]
    x, y, index, targets = track.eval_set(mnist_dir)
    assert x.shape == (1000, 1, 28, 28) and index.max() < 10000
    assert torch.all(targets != y)
    assert index[:4].tolist() == [9, 23, 31, 33]


def test_eval_size_beyond_the_test_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrackError, match="eval_size 501 exceeds the 500 test images"):
        dataclasses.replace(DIGITS, eval_size=501).eval_set(tmp_path)


def test_train_set_is_a_copy(tmp_path: Path) -> None:
    x, y = DIGITS.train_set(tmp_path)
    assert x.shape == (1297, 1, 8, 8) and y.shape == (1297,)
    x.zero_()
    assert DIGITS.train_set(tmp_path)[0].sum() > 0


def test_available_says_why_not(tmp_path: Path) -> None:
    assert DIGITS.available(tmp_path) is None
    reason = TRACKS["mnist-linf"].available(tmp_path)
    assert reason is not None and "ARENA_DATA_DIR" in reason


def test_available_with_mnist(mnist_dir: Path) -> None:
    assert TRACKS["mnist-linf"].available(mnist_dir) is None


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_architectures_give_logits(name: str, shape: tuple[int, ...]) -> None:
    model = ARCHITECTURES[name](shape, 10)
    assert model(torch.rand(5, *shape)).shape == (5, 10)


def test_reference_and_substitute_differ() -> None:
    reference, substitute = DIGITS.make_reference(), DIGITS.make_substitute()
    assert type(reference) is not type(substitute)
    assert any(isinstance(m, torch.nn.Conv2d) for m in reference.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in substitute.modules())


@pytest.mark.usefixtures("one_thread")
def test_reference_cnn_reaches_the_floor_on_digits_within_the_track_epochs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = DIGITS.train_set(tmp_path)
    model = DIGITS.make_reference()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(DIGITS.epochs):
        for batch in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    x_test, y_test, _, _ = DIGITS.eval_set(tmp_path)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= DIGITS.clean_floor


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "cifar"}, "dataset 'cifar' not in"),
        ({"norm": "l1"}, "norm 'l1' not in"),
        ({"eps": 0}, "eps must be positive"),
        ({"eps": 2.0}, "an linf eps above 1"),
        ({"eps": float("nan")}, "eps must be a finite number"),
        ({"eval_size": 2.5}, "eval_size must be an integer, not 2.5"),
        ({"draws": True}, "draws must be an integer, not True"),
        ({"clean_floor": 1.5}, r"clean_floor must lie in \[0, 1\]"),
        ({"reference": "resnet"}, "reference 'resnet' not in"),
        ({"description": 3}, "description must be a string"),
    ],
    ids=["dataset", "norm", "eps-zero", "eps-above-1", "eps-nan", "eval-size", "draws", "floor", "ref", "text"],
)
def test_invalid_values_are_rejected(change: dict[str, object], message: str) -> None:
    with pytest.raises(TrackError, match=message):
        dataclasses.replace(DIGITS, **change)


def test_get_track() -> None:
    assert get_track("digits") is DIGITS
    with pytest.raises(UnknownTrack, match="unknown track 'cifar'; known tracks: digits, ") as caught:
        get_track("cifar")
    assert isinstance(caught.value, KeyError)


# --------------------------------------------------------------------------------------------------
# tracks.toml
# --------------------------------------------------------------------------------------------------


def test_load_tracks_without_a_file_gives_the_builtins(tmp_path: Path) -> None:
    assert load_tracks(tmp_path) == TRACKS


def test_load_tracks_from_toml(tmp_path: Path) -> None:
    (tmp_path / "tracks.toml").write_text(
        """
        [tracks.digits-l2]
        dataset = "digits"
        norm = "l2"
        eps = 1
        eval_size = 100

        [tracks.digits-small]
        base = "digits-l2"
        eval_size = 50

        [tracks.digits]
        base = "digits"
        max_queries = 50
        """
    )
    tracks = load_tracks(tmp_path)
    assert tracks["digits-l2"] == Track("digits-l2", "digits", "l2", 1.0, eval_size=100)
    assert tracks["digits-small"].norm == "l2" and tracks["digits-small"].eval_size == 50
    assert tracks["digits-small"].description == "digits-l2 with eval_size = 50"
    assert tracks["digits"].max_queries == 50 and tracks["digits"].eps == DIGITS.eps
    assert tracks["mnist-linf"] is TRACKS["mnist-linf"]
    assert get_track("digits-small", tracks) is tracks["digits-small"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[tracks.x]\nbase = 'digits'\nepsilon = 0.1",
            r"\[tracks.x\]: unknown field\(s\) \['epsilon'\]; known: base, ",
        ),
        ("[tracks.x]\nbase = 'digits'\neps = 'big'", r"\[tracks.x\]: track 'x': eps must be a finite number"),
        ("[tracks.x]\nbase = 'digits'\nnorm = 'l7'", r"\[tracks.x\]: track 'x': norm 'l7' not in"),
        ("[tracks.x]\nbase = 'nope'", r"\[tracks.x\]: base 'nope' is not a known track"),
        ("[tracks.x]\ndataset = 'digits'", r"\[tracks.x\]: missing field\(s\) \['eps', 'norm'\]"),
        ("[tracks]\nx = 3", "tracks.x must be a table"),
        ("tracks = 3", "'tracks' must hold"),
        ("[track.x]\neps = 0.1", r"unknown key\(s\) \['track'\]"),
        ("[tracks.x\n", "not valid TOML"),
    ],
    ids=[
        "unknown-field",
        "bad-type",
        "bad-norm",
        "unknown-base",
        "missing",
        "not-table",
        "tracks-not-table",
        "unknown-key",
        "bad-toml",
    ],
)
def test_tracks_toml_errors_are_readable(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "tracks.toml").write_text(text)
    with pytest.raises(TrackError, match=message) as caught:
        load_tracks(tmp_path)
    assert str(tmp_path / "tracks.toml") in str(caught.value)
