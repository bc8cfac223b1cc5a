"""An interrupted local round is resumed: the next `arena round run` (or `arena round resume`) finishes it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from test_celery import TINY

from arena.store import Database, Job, Plugin, PluginVersion, Result, Round, RoundMatch

ARENA = Path(sys.executable).parent / "arena"
SLOW = """
import time

import torch
import torch.nn.functional as F

from arena import Defense, hookimpl


class Delay(Defense):
    def train(self, ctx):
        time.sleep(4)
        model = ctx.make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in ctx.batches(64):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.eval()


@hookimpl
def arena_defenses():
    return [Delay]
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh arena home with the tiny track, two built-ins and a students' defense that trains slowly."""
    home, plugins = tmp_path / "home", tmp_path / "students" / "defenses" / "delay"
    home.mkdir()
    (home / "tracks.toml").write_text(TINY)
    plugins.mkdir(parents=True)
    (plugins / "plugin.toml").write_text('name = "delay"\nkind = "defense"\nteam = "students"\nsummary = "sleeps"\n')
    (plugins / "delay.py").write_text(SLOW)
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
        "ARENA_HOME": str(home),
        "ARENA_PLUGIN_DIRS": str(tmp_path / "students"),
        "ARENA_BUILTINS": "fgsm,undefended",
    }


def arena(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(ARENA), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def slow_training(db: Database) -> Job | None:
    """The slow defense's training while it runs (None also while the first run is making the database)."""
    with contextlib.suppress(sa.exc.OperationalError), db.session() as session:
        slow = set(session.scalars(select(PluginVersion.id).join(Plugin).where(Plugin.name == "delay")))
        jobs = session.scalars(select(Job).where(Job.kind == "train-defense", Job.state == "running")).all()
        return next((job for job in jobs if job.params["defense"] in slow), None)
    return None


@pytest.mark.slow
def test_a_killed_local_round_is_resumed_by_the_next_round_run(env: dict[str, str]) -> None:
    db = Database(f"sqlite:///{env['ARENA_HOME']}/arena.db")
    first = subprocess.Popen(
        [str(ARENA), "round", "run", "--track", "tiny", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while (job := slow_training(db)) is None:
        assert first.poll() is None, "the round ended before the slow training started"
        assert time.monotonic() < deadline, "the slow training never started"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the executor and its sandboxes, as a reboot would
    first.wait()
    with db.session() as session:
        assert session.scalar(select(Round.status).where(Round.number == 1)) == "running"
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.state == "queued"))
    assert queued > 0, "the matches with the slow defense wait for its training"

    second = arena(env, "round", "run", "--track", "tiny", "--quiet")
    assert "resuming round 1" in second.stdout
    with db.session() as session:
        rounds = dict(session.execute(select(Round.number, Round.status)).all())
        assert rounds == {1: "done", 2: "done"}
        lost = session.get(Job, job.id)
        assert lost.state == "done" and lost.attempts == 2
        assert session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(("queued", "running")))) == 0
        cells = session.scalars(select(RoundMatch.result_key).where(RoundMatch.round_id == lost.round_id)).all()
        results = session.scalars(select(Result.key).where(Result.key.in_(cells))).all()
        assert sorted(results) == sorted(set(cells)), "every cell has one result, none twice"
        statuses = session.scalars(select(Result.status).where(Result.key.in_(cells))).all()
        assert set(statuses) == {"ok"}
    assert "no round is unfinished" in arena(env, "round", "resume").stdout
