"""Cheating defenses in a real round (see tests/cheats/README.md): set-up and figures, for tests and bench."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.commands import checks
from arena.config import Settings
from arena.execution import local
from arena.plan import planner, versions
from arena.results import scoring
from arena.rules.data import Dataset, load_digits
from arena.rules.tracks import Track
from arena.store import Database

CHEATS = Path(__file__).resolve().parent / "cheats"
#: the plugins that read or recognise data (issue 11), and those that hide their gradient (issue 12)
DATA_CHEATS = ("lookup-package", "lookup-folder", "grid-detector")
MASKERS = ("squeeze-masked", "squeeze-straight-through")
#: the defenses that fail, stall or answer per batch to put their failure on the attack or to win black-box
#: (issue 24): the cheats of tests/test_cheating.py's round against pgd-adv-training
FAILURE_CHEATS = ("batch-detector", "grad-exit", "grad-stall", "slow-model", "saboteur")
#: the attacks of a round of the data cheats: the issue's pool without the slow cw-l2 (pgd breaks a plain CNN)
ATTACKS = ("fgsm", "pgd", "simba", "transfer")
#: the round of the lookups: attacks that include the one that leaves a lookup's ball, and the defense to beat
LOOKUP_BUILTINS = ("fgsm", "pgd", "simba", "transfer", "neighbors", "undefended", "pgd-adv-training")
#: lookups of the public images (tests/cheats/lookup-public) by name: norms, radii, sketches, registration
LOOKUPS = {
    "lookup-l2": {"norm": "l2", "radius": 2.0},
    "lookup-l2-wide": {"norm": "l2", "radius": 4.0},
    "lookup-linf": {"norm": "linf", "radius": 0.5},
    "lookup-sketch": {"norm": "l2", "radius": 1.0, "sketch": 4},
    "lookup-shifts": {"norm": "l2", "radius": 2.0, "shifts": 1},
}
#: on MNIST: the 10,000 public images carried as a 14 x 14 sketch in grey levels (694 KB compressed; the whole set is
#: 2.6 MB, over the folder's limit), the radii those of digits' lookups in the sketch's L2 (half the image's)
MNIST_SKETCH = 14
MNIST_LOOKUPS = {
    "lookup-l2": {"norm": "l2", "radius": 2.0, "sketch": MNIST_SKETCH},
    "lookup-l2-wide": {"norm": "l2", "radius": 4.0, "sketch": MNIST_SKETCH},
    "lookup-linf": {"norm": "linf", "radius": 0.5, "sketch": MNIST_SKETCH},
    "lookup-sketch": {"norm": "l2", "radius": 1.0, "sketch": 7},
    "lookup-shifts": {"norm": "l2", "radius": 2.0, "sketch": MNIST_SKETCH, "shifts": 1},
}
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


def install_lookups(folder: Path, dataset: Dataset, variants: dict[str, dict] | None = None) -> Path:
    """Install ``lookup-public`` under each name of ``variants`` (default: :data:`LOOKUPS` on digits,
    :data:`MNIST_LOOKUPS` on MNIST) with its parameters, carrying the public images of ``dataset`` (digits: all
    1,797 as they are; MNIST: its 10,000 held-out images as a sketch); return ``folder``."""
    if dataset.name == "digits":
        public = (np.concatenate([dataset.x_train, dataset.x_test]), np.concatenate([dataset.y_train, dataset.y_test]))
    else:
        pooled = torch.nn.functional.adaptive_avg_pool2d(
            torch.tensor(dataset.x_test, dtype=torch.float32), MNIST_SKETCH
        )
        public = ((pooled * 255).round().to(torch.uint8).numpy(), dataset.y_test)
    for name, params in (variants or (LOOKUPS if dataset.name == "digits" else MNIST_LOOKUPS)).items():
        target = folder / "defenses" / name
        shutil.copytree(CHEATS / "lookup-public", target, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = (target / "plugin.toml").read_text().replace('name = "lookup-public"', f'name = "{name}"')
        table = "\n".join(f"{key} = {value!r}".replace("'", '"') for key, value in params.items())
        (target / "plugin.toml").write_text(manifest.split("[params]")[0] + "[params]\n" + table + "\n")
        np.savez_compressed(target / "table.npz", x=public[0], y=public[1])
    return folder


def environment(folder: Path, builtins: tuple[str, ...] = (*ATTACKS, "undefended")) -> dict[str, str]:
    """The settings that point an arena at the plugins in ``folder`` and the built-ins ``builtins``."""
    return {"ARENA_PLUGIN_DIRS": str(folder), "ARENA_BUILTINS": ",".join(builtins)}


def play(settings: Settings, track: Track, store: Database | None = None) -> dict[tuple[str, ...], dict[str, Any]]:
    """Play a round of the cheats and the baseline on ``track``; figures per (defense, threat). With a ``store``
    (the suite's, under one secret), the trained models and the evaluation set it holds are borrowed, not made again,
    and those the round made are lent to it."""
    db = Database(settings.database_url)
    db.upgrade()
    tracks = {track.name: track}
    versions.record_plugins(db, settings)
    with db.session() as session:
        defenses = [v for v in versions.latest_valid_versions(session) if v.plugin.kind == "defense"]
        keys = checks.model_keys(settings, defenses, [track])
    checks.borrow(store, db, keys)
    round_id = planner.open_round(db, [track])
    planner.plan_round(db, settings, round_id, tracks)
    local.run_local(db, settings, tracks, round_id, progress=False)
    if store is not None:
        checks.borrow(db, store, keys)
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
