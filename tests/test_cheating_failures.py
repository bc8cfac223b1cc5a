"""Defenses that fail, stall or judge whole batches rank below the course's best defense (issue 24): they play a
real digits round against ``pgd-adv-training``.

Before the arena knew whose code was running, ``grad-exit`` and ``grad-stall`` put their failure on the attack's
record, and ``batch-detector`` led the black-box board with its clean accuracy (0.927), first by 59 points.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cheating import FAILURE_CHEATS, environment, install, play

from arena.config import Settings
from arena.rules.tracks import TRACKS
from arena.store import Database

#: 100 images, and an inference budget of 5 ms an image: a stalled defense forfeits in seconds, not a minute
TRACK = dataclasses.replace(TRACKS["digits"], eval_size=100, inference_ms=5.0)


@pytest.mark.slow
def test_defenses_that_fail_stall_or_judge_batches_rank_below_pgd_adv_training(
    shared_models: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24: a defense that exits or stalls under gradients, a slow one, a saboteur that fails only beside
    an attack's code and a batch-level detector all rank below the course's best defense on every board, and
    no attack carries a failure the defense's code caused."""
    attacks = ("pgd", "transfer")
    plugins_dir = install(tmp_path / "cheats", FAILURE_CHEATS)
    for name, value in environment(plugins_dir, (*attacks, "pgd-adv-training")).items():
        monkeypatch.setenv(name, value)
    figures = play(Settings.from_env(), TRACK, shared_models)
    for threat in ("white-box", "gray-box", "black-box"):
        best = figures["pgd-adv-training", threat]
        assert best["failed"] == 0, (threat, best)
        for cheat in FAILURE_CHEATS:
            assert figures[cheat, threat]["rank"] > best["rank"], (cheat, threat, figures[cheat, threat], best)
        for attack in (a for a in attacks if (a, threat) in figures):
            assert figures[attack, threat]["failed"] == 0, (attack, threat)
    for threat in ("white-box", "gray-box"):  # failing under gradients forfeits the matches that take them
        for cheat in ("grad-exit", "grad-stall"):
            assert figures["pgd", cheat, threat]["status"] == "failed", (cheat, threat)
    for threat in ("white-box", "gray-box", "black-box"):  # a slow model within its budget is just played
        assert figures["pgd" if threat != "black-box" else "transfer", "slow-model", threat]["status"] == "ok"
