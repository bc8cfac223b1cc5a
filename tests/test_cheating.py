"""Cheating defenses rank at their honest level (issue 11): they play a real round against the plain baseline.

Before the secret evaluation data and the pixel grid, ``lookup-package`` and ``lookup-folder`` scored
100 % worst-case robust on digits and ``grid-detector`` 95.7 %, first by far (bench/cheating.py shows it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cheating import LOOKUP_BUILTINS, LOOKUPS, environment, install, install_lookups, play
from hostile import write_defense

from arena.config import Settings
from arena.contract import plugins
from arena.play import training
from arena.play.training import TrainSpec
from arena.rules.data import load_digits
from arena.rules.tracks import TRACKS
from arena.sandbox import PluginFailure
from arena.store import Database

#: how much above the plain baseline a cheat may land by chance (its CNN trains from another secret seed)
SLACK = 0.05
#: digits with 150 of its 300 images: the rankings these rounds check, on half the images (their trainings stay)
SMALLER = dataclasses.replace(TRACKS["digits"], eval_size=150)


@pytest.mark.slow
def test_cheating_defenses_rank_no_better_than_the_plain_cnn(
    shared_models: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment(install(tmp_path / "cheats")).items():
        monkeypatch.setenv(name, value)
    figures = play(Settings.from_env(), SMALLER, shared_models)
    for threat in ("white-box", "gray-box", "black-box"):
        honest = figures["undefended", threat]
        assert honest["failed"] == 0
        for cheat in ("lookup-package", "lookup-folder", "grid-detector"):
            row = figures[cheat, threat]
            assert row["failed"] == 0, (cheat, threat)
            assert row["worst"] <= honest["worst"] + SLACK, (cheat, threat, row, honest)
            assert row["mean"] <= honest["mean"] + SLACK, (cheat, threat, row, honest)
            assert row["clean"] <= honest["clean"] + SLACK, (cheat, threat, row, honest)


@pytest.mark.slow
def test_lookups_of_the_public_images_rank_below_pgd_training(
    shared_models: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: a lookup of the public originals (L2 or L-inf, any radius, a 4 x 4 sketch, registered over
    shifts) is flat inside its ball; ``neighbors`` starts outside it, so each ranks below PGD training."""
    folder = install_lookups(tmp_path / "cheats", load_digits())
    for name, value in environment(folder, LOOKUP_BUILTINS).items():
        monkeypatch.setenv(name, value)
    figures = play(Settings.from_env(), dataclasses.replace(TRACKS["digits"], eval_size=100), shared_models)
    for threat in ("white-box", "gray-box", "black-box"):
        honest = figures["pgd-adv-training", threat]
        assert honest["failed"] == 0
        for cheat in LOOKUPS:
            row = figures[cheat, threat]
            assert row["failed"] == 0, (cheat, threat)
            assert row["worst"] < honest["worst"], (cheat, threat, row, honest)


@pytest.mark.slow
def test_a_defense_cannot_tell_the_adversarial_host_by_how_long_it_waited(
    shared_models: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``idle-detector`` rejects everything once its host has idled: were the adversarial host started while
    the attack plays, it would reject every adversarial input of a slow attack and survive it whole. Both hosts
    start once the inputs are ready; on a loaded machine one may still idle by chance, and then it refuses the
    clean images it judges with the adversarial ones: what it gains in robustness it loses in clean accuracy,
    and it ranks below the floor."""
    plugins_dir = install(tmp_path / "cheats", ("idle-detector",))
    for name, value in environment(plugins_dir, ("pgd", "transfer", "undefended")).items():
        monkeypatch.setenv(name, value)
    figures = play(Settings.from_env(), SMALLER, shared_models)
    for attack, threat in (("pgd", "white-box"), ("pgd", "gray-box"), ("transfer", "black-box")):
        honest, cheat = figures[attack, "undefended", threat], figures[attack, "idle-detector", threat]
        assert cheat["status"] == honest["status"] == "ok"
        board = figures["idle-detector", threat]
        if cheat["robust"] > honest["robust"] + SLACK:  # a host idled: it paid in clean accuracy, and ranks last
            ranked = (
                board["clean"] < TRACKS["digits"].clean_floor and board["rank"] > figures["undefended", threat]["rank"]
            )
            assert ranked, (attack, threat, cheat, honest, board)


def test_a_trained_model_heavier_than_the_limit_fails(tmp_path: Path) -> None:
    """A data set cannot ride along in the weights: the track caps a trained model's size."""
    body = """
    model = ctx.make_model()
    model.register_buffer("table", torch.zeros(2 * 1024 * 1024 // 4))
    return model
    """
    source = plugins.read_folder(write_defense(tmp_path, "heavy", body))
    track = dataclasses.replace(TRACKS["digits"], max_artifact_mb=1.0, epochs=1)
    with pytest.raises(
        PluginFailure, match=r"hostile/heavy: the trained model weighs 2\.\d MiB, over the track's limit of 1 MiB"
    ):
        training.train_defense(TrainSpec(source, track, 0, tmp_path / "data", tmp_path / "cache"))
    light = dataclasses.replace(track, max_artifact_mb=4.0)
    data, _ = training.train_defense(TrainSpec(source, light, 0, tmp_path / "data", tmp_path / "cache"))
    assert len(data) > 2 * 1024 * 1024
