"""Cheating defenses in a real round (see tests/cheats/README.md): set-up and figures, for tests and bench."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from arena import planner, scoring, versions
from arena.config import Settings
from arena.data import load_digits
from arena.execution import local
from arena.store import Database
from arena.tracks import Track

CHEATS = Path(__file__).resolve().parent / "cheats"
#: the plugins that read or recognise data (issue 11), and those that hide their gradient (issue 12)
DATA_CHEATS = ("lookup-package", "lookup-folder", "grid-detector")
MASKERS = ("squeeze-masked", "squeeze-straight-through")
#: the defenses that fail, stall or answer per batch to put their failure on the attack or to win black-box
#: (issue 24): the cheats of tests/test_cheating.py's round against pgd-adv-training
FAILURE_CHEATS = ("batch-detector", "grad-exit", "grad-stall", "slow-model", "saboteur")
#: the attacks of a round of the data cheats: the issue's pool without the slow cw-l2 (pgd breaks a plain CNN)
ATTACKS = ("fgsm", "pgd", "simba", "transfer")
REFERENCE_ATTACKS = ("autoattack", "spsa")
ALL_ATTACKS = (
    "fgsm",
    "fgsm-targeted",
    "ifgsm",
    "rand-fgsm",
    "pgd",
    "cw-l2",
    "deepfool",
    "universal",
    "simba",
    "transfer",
)


def install(folder: Path, cheats: tuple[str, ...] = DATA_CHEATS) -> Path:
    """Copy ``cheats`` into ``folder/defenses`` (``lookup-folder`` gets its table); return ``folder``."""
    for name in cheats:
        shutil.copytree(CHEATS / name, folder / "defenses" / name, ignore=shutil.ignore_patterns("__pycache__"))
    if "lookup-folder" in cheats:
        digits = load_digits()
        np.savez_compressed(folder / "defenses" / "lookup-folder" / "table.npz", x=digits.x_test, y=digits.y_test)
    return folder


def environment(folder: Path, builtins: tuple[str, ...] = (*ATTACKS, "undefended")) -> dict[str, str]:
    """The settings that point an arena at the plugins in ``folder`` and the built-ins ``builtins``."""
    return {"ARENA_PLUGIN_DIRS": str(folder), "ARENA_BUILTINS": ",".join(builtins)}


def play(settings: Settings, track: Track) -> dict[tuple[str, ...], dict[str, Any]]:
    """Play a round of the cheats and the baseline on ``track``; figures per (defense, threat)."""
    db = Database(settings.database_url)
    db.upgrade()
    tracks = {track.name: track}
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [track])
    planner.plan_round(db, settings, round_id, tracks)
    local.run_local(db, settings, tracks, round_id, progress=False)
    figures: dict[tuple[str, ...], dict[str, Any]] = {}
    with db.session() as session:
        for board in scoring.round_standings(session, round_id):
            for standing in board.defenses:
                figures[standing.entry.plugin, board.threat] = {
                    "clean": standing.clean_accuracy,
                    "worst": standing.worst_case_robust_accuracy,
                    "mean": standing.mean_robust_accuracy,
                    "failed": standing.failed,
                    "rank": standing.rank,
                    "diagnostics": [flag["name"] for flag in standing.diagnostics],
                }
            for standing in board.attacks:
                figures[standing.entry.plugin, board.threat] = {"failed": standing.failed}
            for row, attack in zip(board.matrix, board.attacks, strict=True):
                for cell, defense in zip(row, board.defenses, strict=True):
                    if cell is not None:
                        figures[attack.entry.plugin, defense.entry.plugin, board.threat] = {
                            "robust": cell.robust_accuracy, "success": cell.success_rate, "status": cell.status
                        }  # fmt: skip
    return figures
