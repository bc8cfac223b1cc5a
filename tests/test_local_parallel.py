"""Several jobs side by side (``--jobs``, ``ARENA_JOBS``): the same artifacts and results, bit for bit, as one at a
time, also when a worker process is killed in the middle of the round (its job is played again)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from test_rounds import TINY

from arena.config import Settings, SettingsError, default_jobs
from arena.execution import local
from arena.plan import planner, versions
from arena.rules.tracks import load_tracks
from arena.store import Artifact, Database, Job, Result, Round, records

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILTINS = [("attacks", "fgsm"), ("attacks", "transfer"), ("defenses", "undefended"), ("defenses", "fgsm-adv-training")]
SECRET = "ab" * 32
#: what a result measures of the machine, not of the match (it differs between any two runs)
TIMINGS = {"attack_seconds"}


def arena(root: Path) -> Settings:
    """A fresh arena on the tiny track with a few built-ins, and the same secret in every test (the same keys)."""
    home, plugins = root / "home", root / "plugins"
    home.mkdir(parents=True)
    (home / "tracks.toml").write_text(TINY)
    (home / "secret").write_text(SECRET)
    for kind, name in BUILTINS:
        shutil.copytree(REPO / "plugins" / kind / name, plugins / kind / name)
    return Settings(home, f"sqlite:///{home / 'arena.db'}", home / "data", (plugins,), None)


def play(settings: Settings, workers: int, on_start: threading.Event | None = None) -> tuple[dict, dict, Database]:
    """Play a round with ``workers`` jobs at a time; its artifacts (key: data's SHA-256) and results (key: figures)."""
    db = Database(settings.database_url)
    db.upgrade()
    tracks = load_tracks(settings.home)
    versions.record_plugins(db, settings)
    round_id = planner.open_round(db, [tracks["tiny"]])
    planner.plan_round(db, settings, round_id, tracks)
    if on_start is not None:
        on_start.set()
    local.run_local(db, settings, tracks, round_id, progress=False, workers=workers)
    with db.session() as session:
        assert session.get(Round, round_id).status == "done"
        artifacts = {a.key: hashlib.sha256(a.data).hexdigest() for a in session.scalars(select(Artifact))}
        results = {
            r.key: (r.status, _figures(r.metrics), _digest(r.samples), _digest(r.gallery))
            for r in session.scalars(select(Result))
        }
    return artifacts, results, db


def _figures(metrics: dict) -> dict:
    return {name: value for name, value in metrics.items() if name not in TIMINGS}


def _digest(data: bytes | None) -> str:
    """The SHA-256 of the arrays stored (not of their zip file, whose entries carry the time they were written)."""
    digest = hashlib.sha256()
    for name, array in sorted(records.unpack(data).items()) if data else ():
        digest.update(name.encode() + str(array.dtype).encode() + array.tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    artifacts, results, db = play(arena(tmp_path_factory.mktemp("one")), workers=1)
    db.dispose()
    return artifacts, results


def test_two_jobs_at_a_time_make_the_same_artifacts_and_results(
    one_at_a_time: tuple[dict, dict], tmp_path: Path
) -> None:
    artifacts, results, db = play(arena(tmp_path), workers=2)
    with db.session() as session:
        workers = set(session.scalars(select(Job.worker)))
    db.dispose()
    assert len(workers) == 2, "two worker processes ran the jobs"
    assert (artifacts, results) == one_at_a_time
    assert {result[0] for result in results.values()} == {"ok"}


def test_a_killed_worker_s_job_is_played_again(one_at_a_time: tuple[dict, dict], tmp_path: Path) -> None:
    settings = arena(tmp_path)
    planned, ended, killed = threading.Event(), threading.Event(), []

    def kill_a_training() -> None:  # SIGKILL the worker process of the first training seen running
        planned.wait()
        db = Database(settings.database_url)
        while not killed and not ended.wait(0.02):
            with db.session() as session:
                job = session.scalars(select(Job).where(Job.kind == "train-defense", Job.state == "running")).first()
                if job is not None:
                    os.kill(int(job.worker.rsplit(":", 1)[1]), signal.SIGKILL)
                    killed.append(job.id)
        db.dispose()

    killer = threading.Thread(target=kill_a_training, daemon=True)
    killer.start()
    artifacts, results, db = play(settings, workers=2, on_start=planned)
    ended.set()
    killer.join(timeout=5)
    assert killed, "a training was killed"
    with db.session() as session:
        lost = session.get(Job, killed[0])
        assert (lost.state, lost.attempts) == ("done", 2)
    db.dispose()
    assert (artifacts, results) == one_at_a_time


def test_arena_jobs_is_read_from_the_environment() -> None:
    assert Settings.from_env({"ARENA_JOBS": "3"}).jobs == 3
    assert Settings.from_env({}).jobs == default_jobs() >= 1
    with pytest.raises(SettingsError, match="ARENA_JOBS"):
        Settings.from_env({"ARENA_JOBS": "0"})
