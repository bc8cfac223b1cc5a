"""Diagnostics on real defenses (issue 12): defensive distillation masks its gradients, PGD training does not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cheating import environment, play

from arena.config import Settings
from arena.rules.tracks import TRACKS
from arena.store import Database


@pytest.mark.slow
def test_distillation_is_flagged_for_vanishing_gradients_and_pgd_training_is_not(
    shared_models: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "none").mkdir()
    builtins = ("fgsm", "pgd", "undefended", "distillation", "pgd-adv-training")
    for name, value in environment(tmp_path / "none", builtins).items():
        monkeypatch.setenv(name, value)
    track = dataclasses.replace(TRACKS["digits"], eval_size=150, batch_size=150)
    figures = play(Settings.from_env(), track, shared_models)
    assert "vanishing-gradients" in figures["distillation", "white-box"]["diagnostics"]
    assert "vanishing-gradients" not in figures["pgd-adv-training", "white-box"]["diagnostics"]
    assert figures["undefended", "white-box"]["diagnostics"] == []
