"""The trained models the suite's rounds share: one secret (:data:`TEST_SECRET`), one store per run.

A defense, its twin, the substitute and an evaluation set are artifacts named by what made them
(:func:`arena.plan.keys.artifact_key`), so rounds under the same secret can share them: ``cheating.play`` borrows
what the store holds before it plans and lends it what the round trained (:mod:`arena.commands.checks`), and
:func:`defense` trains a defense as a round's ``train-defense`` job would, once per run.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from sqlalchemy import select

from arena.config import Settings
from arena.contract.plugins import PluginSource
from arena.plan.keys import artifact_key, secret_fingerprint
from arena.play.training import TrainSpec, train_defense
from arena.rules.seeds import derive_seed
from arena.rules.tracks import Track
from arena.store import Artifact, Database
from arena.store.db import insert_once

#: the arena secret of the rounds that share trained models: the round of docs/evaluation.md
TEST_SECRET = "ab" * 32


def open_store(folder: Path) -> Database:
    """The store in ``folder`` (created and migrated by the first process to ask; the others wait for it)."""
    with open(folder / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = Database(f"sqlite:///{folder / 'models.db'}")
        db.upgrade()
    return db


def defense(store: Database, source: PluginSource, track: Track, home: Path, cache: Path) -> bytes:
    """``source`` trained on ``track`` as a round under :data:`TEST_SECRET` trains it (its seed, its key): read from
    ``store``, else trained in its sandbox (``home`` holds the secret and the data folder) and lent to the store."""
    (home / "secret").write_text(TEST_SECRET)
    settings = Settings(home, "sqlite://", home / "data", (), None)
    key = artifact_key("defense", track, secret_fingerprint(settings), source.content_hash)
    with store.session() as session:
        artifact = session.scalar(select(Artifact.data).where(Artifact.key == key))
    if artifact is None:
        seed = derive_seed(settings.secret(), "defense", source.content_hash, track.name)
        artifact, meta = train_defense(TrainSpec(source, track, seed, settings.data_dir, cache))
        with store.session() as session:
            insert_once(session, Artifact, key=key, kind="defense", track=track.name, data=artifact, meta=meta)
    return artifact
