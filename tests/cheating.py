"""Cheating defenses in a real round (see tests/cheats/README.md): set-up and figures, for tests and bench."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from arena import executors, planner, scoring
from arena.config import Settings
from arena.data import load_digits
from arena.store import Database
from arena.tracks import Track

CHEATS = Path(__file__).resolve().parent / "cheats"
#: the attacks of the round: the issue's pool without the slow cw-l2 (the one that breaks a plain CNN is pgd)
ATTACKS = "fgsm,pgd,simba,transfer"


def install(folder: Path) -> Path:
    """Copy the cheats into ``folder/defenses`` and give ``lookup-folder`` its table; return ``folder``."""
    defenses = folder / "defenses"
    shutil.copytree(CHEATS, defenses, ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    digits = load_digits()
    np.savez_compressed(defenses / "lookup-folder" / "table.npz", x=digits.x_test, y=digits.y_test)
    return folder


def environment(folder: Path) -> dict[str, str]:
    """The settings that point an arena at the cheats in ``folder``, the baseline and the round's attacks."""
    return {"ARENA_PLUGIN_DIRS": str(folder), "ARENA_BUILTINS": f"{ATTACKS},undefended"}


def play(settings: Settings, track: Track) -> dict[tuple[str, str], dict[str, float | None]]:
    """Play a round of the cheats and the baseline on ``track``; figures per (defense, threat)."""
    db = Database(settings.database_url)
    db.upgrade()
    tracks = {track.name: track}
    planner.sync(db, settings)
    round_id = planner.open_round(db, [track])
    planner.plan_round(db, settings, round_id, tracks)
    executors.run_local(db, settings, tracks, round_id, progress=False)
    figures = {}
    with db.session() as session:
        for board in scoring.round_standings(session, round_id):
            for standing in board.defenses:
                figures[standing.entry.plugin, board.threat] = {
                    "clean": standing.clean_accuracy,
                    "worst": standing.worst_case_robust_accuracy,
                    "mean": standing.mean_robust_accuracy,
                    "failed": standing.failed,
                }
    return figures
