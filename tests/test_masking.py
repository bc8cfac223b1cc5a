"""Gradient masking stops paying (issue 12): the reference adaptive attack against hidden and honest gradients."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import models
import pytest
from cheating import CHEATS

from arena.contract import plugins
from arena.play import training
from arena.play.match import MatchSpec, play
from arena.play.training import TrainSpec
from arena.rules import evaluation
from arena.rules.tracks import TRACKS
from arena.store import Database

TRACK = dataclasses.replace(TRACKS["digits"], eval_size=150, batch_size=150)
#: what the exact straight-through gradient may still buy over the gradient-free parts (7 of 150 samples)
SLACK = 0.05
PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SQUEEZES = ("squeeze-masked", "squeeze-straight-through")
DEFENSES = {
    "squeeze-masked": CHEATS / "squeeze-masked",
    "squeeze-straight-through": CHEATS / "squeeze-straight-through",
    "pgd-adv-training": PLUGINS / "defenses" / "pgd-adv-training",
}


@pytest.fixture(scope="module")
def success(tmp_path_factory: pytest.TempPathFactory, model_store: Database) -> dict[tuple[str, str], dict]:
    """White-box metrics of autoattack and pgd against each defense (the squeezes from one seed; PGD training as a
    round under the suite's secret trains it, once per run: tests/models.py)."""
    root = tmp_path_factory.mktemp("masking")
    data, cache = root / "data", root / "cache"
    substitute, _ = training.train_substitute(TRACK, data)
    packed = evaluation.build(TRACK, data, b"test").pack(TRACK.levels)
    found = {}
    for name, folder in DEFENSES.items():
        defense = plugins.read_folder(folder)
        if name in SQUEEZES:  # from one seed: the same function, with and without a straight-through gradient
            model, _ = training.train_defense(TrainSpec(defense, TRACK, 1, data, cache))
        else:
            model = models.defense(model_store, defense, TRACK, root, cache)
        for attack in ("autoattack", "pgd", "spsa"):
            spec = MatchSpec(
                plugins.read_folder(PLUGINS / "attacks" / attack), defense, TRACK, "white-box", 0, model, None,
                substitute, packed, data, cache,
            )  # fmt: skip
            outcome = play(spec)
            assert outcome.status == "ok", outcome.error
            found[attack, name] = outcome.metrics
    return found


@pytest.mark.slow
def test_spsa_sees_through_the_masked_gradient(success: dict[tuple[str, str], dict]) -> None:
    masked, honest = success["spsa", "squeeze-masked"], success["spsa", "squeeze-straight-through"]
    assert masked["success_rate"] >= honest["success_rate"] - SLACK and masked["queries"] == 0
    assert masked["success_rate"] > 2 * success["pgd", "squeeze-masked"]["success_rate"]


@pytest.mark.slow
def test_hiding_the_gradient_no_longer_pays(success: dict[tuple[str, str], dict]) -> None:
    masked, honest = success["autoattack", "squeeze-masked"], success["autoattack", "squeeze-straight-through"]
    assert success["pgd", "squeeze-masked"]["success_rate"] < 0.5, "pgd is fooled by the masked gradient"
    # the same function with and without a straight-through gradient: within a few samples of each other
    assert masked["success_rate"] >= honest["success_rate"] - SLACK, (masked, honest)
    assert masked["robust_accuracy"] <= honest["robust_accuracy"] + SLACK


@pytest.mark.slow
def test_the_reference_attack_is_no_weaker_than_pgd_against_adversarial_training(success: dict) -> None:
    reference, pgd = success["autoattack", "pgd-adv-training"], success["pgd", "pgd-adv-training"]
    assert reference["robust_accuracy"] <= pgd["robust_accuracy"] + SLACK, (reference, pgd)
    assert reference["violations"] == 0 and reference["queries"] == 0
