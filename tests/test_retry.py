"""Replaying failed work: a match that never ran replays with its input, `--retry-failed` replays failed
matches, and earlier rounds keep showing what they showed.

The failures are real and transient without a second version of any code: a plugin reserves 3 GiB
(never touched) while the test caps the sandboxes at 1 GiB (``ARENA_SANDBOX_MEMORY``, an arena setting
outside every key, as an instructor would raise it after an out-of-memory failure); then the cap goes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from click.testing import Result as Invocation
from services import fresh_postgres_database
from sqlalchemy import select
from test_rounds import TINY, write_plugin

from arena.commands.cli import main
from arena.config import Settings
from arena.results import scoring
from arena.results.boards import Cell
from arena.sandbox import namespaces
from arena.store import Database, Result, Round
from arena.store.db import migration_config
from leaderboard import create_app

#: the sandboxes' memory while the first attempts run: enough for every built-in, not for HUNGRY_*
LOW_MEMORY = "1G"

HUNGRY_ATTACK = """
import torch
from arena import Attack, hookimpl

class Hungry(Attack):
    norms = ("linf",)
    threats = ("white-box",)

    def run(self, target, x, y, budget):
        torch.empty(3 * 2**30, dtype=torch.uint8)  # reserved, never touched
        return x.clone()

@hookimpl
def arena_attacks():
    return [Hungry]
"""

HUNGRY_DEFENSE = """
import torch
from arena import Defense, hookimpl

class Hungry(Defense):
    def train(self, ctx):
        torch.empty(3 * 2**30, dtype=torch.uint8)  # reserved, never touched
        return ctx.make_model().eval()

@hookimpl
def arena_defenses():
    return [Hungry]
"""


@pytest.fixture
def students(arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny track, two built-ins (fgsm, undefended) and a students' folder; sandboxes capped at 1 GiB."""
    if namespaces.gpu_devices() or os.environ.get("CUDA_VISIBLE_DEVICES"):
        pytest.skip("sandbox memory limits are not enforced on GPU hosts: the first attempts would not fail")
    arena_home.mkdir(parents=True)
    (arena_home / "tracks.toml").write_text(TINY)
    folder = tmp_path / "students"
    monkeypatch.setenv("ARENA_PLUGIN_DIRS", str(folder))
    monkeypatch.setenv("ARENA_BUILTINS", "fgsm,undefended")
    monkeypatch.setenv("ARENA_SANDBOX_MEMORY", LOW_MEMORY)
    return folder


def arena_cli(*args: str) -> Invocation:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def shown(number: int) -> dict[tuple[str, str, str], Cell]:
    """Round ``number``'s matrix as the board shows it: (attack, defense, threat) -> cell."""
    db = Database(Settings.from_env().database_url)
    with db.session() as session:
        round_id = session.scalar(select(Round.id).where(Round.number == number))
        cells = {}
        for board in scoring.round_standings(session, round_id):
            for attack, row in zip(board.attacks, board.matrix, strict=True):
                for defense, cell in zip(board.defenses, row, strict=True):
                    if cell is not None:
                        cells[attack.entry.plugin, defense.entry.plugin, board.threat] = cell
        return cells


def failures(attack: str, number: int) -> int:
    """How many failed matches the rankings of round ``number`` count against ``attack``."""
    db = Database(Settings.from_env().database_url)
    with db.session() as session:
        round_id = session.scalar(select(Round.id).where(Round.number == number))
        boards = scoring.round_standings(session, round_id)
        return sum(a.failed for board in boards for a in board.attacks if a.entry.plugin == attack)


def attempts(result_key: str) -> list[Result]:
    """Every attempt at the match of the cell showing ``result_key``, first to last."""
    db = Database(Settings.from_env().database_url)
    with db.session() as session:
        content_key = session.scalar(select(Result.content_key).where(Result.key == result_key))
        return list(session.scalars(select(Result).where(Result.content_key == content_key).order_by(Result.attempt)))


@pytest.mark.slow
def test_a_failed_training_replays_its_matches(students: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(students, "hungry", "defense", HUNGRY_DEFENSE)
    arena_cli("round", "run", "--track", "tiny", "--quiet")
    first = shown(1)
    for threat in ("white-box", "gray-box"):
        cell = first["fgsm", "hungry", threat]
        assert cell.status == "failed" and cell.blame == "defense", "the defense's failure, not the attack's"
        assert cell.error.startswith("the defense could not be trained, so the match counts against it: students/hun")
        assert "/" not in cell.error.split("students/hungry")[1].split(" ")[0], "no server path in a public reason"
        assert attempts(cell.result_key)[0].missing_inputs
    assert first["fgsm", "undefended", "white-box"].status == "ok"
    assert failures("fgsm", 1) == 0

    monkeypatch.delenv("ARENA_SANDBOX_MEMORY")  # the machine has room again; no --retry-failed
    second = arena_cli("round", "run", "--track", "tiny", "--quiet")

    assert "round planned: 4 matches, 2 reused from earlier results, 2 replayed; new jobs: 2 match" in second.output
    assert "1 train-defense: replay: the training of students/hungry@" in second.output
    assert "1 match: replay: its defense's training failed before" in second.output
    assert "1 match: replay: its defense's training and its twin's training failed before" in second.output
    replayed, before = shown(2), shown(1)
    assert before == first  # round 1 still shows its failures
    for threat in ("white-box", "gray-box"):
        assert replayed["fgsm", "hungry", threat].status == "ok"
        history = attempts(replayed["fgsm", "hungry", threat].result_key)
        assert [(r.attempt, r.status) for r in history] == [(0, "failed"), (1, "ok")]
        assert history[1].missing_inputs is None
    third = arena_cli("round", "run", "--track", "tiny", "--quiet")
    assert "4 matches, 4 reused from earlier results; new jobs: none" in third.output


@pytest.mark.slow
def test_retry_failed_replays_a_failed_match_and_keeps_earlier_rounds(
    students: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_plugin(students, "hungry", "attack", HUNGRY_ATTACK)
    arena_cli("round", "run", "--track", "tiny", "--quiet")
    arena_cli("round", "publish", "1")
    failed = shown(1)["hungry", "undefended", "white-box"]
    assert failed.status == "failed" and "can't allocate memory" in failed.error
    assert "the sandbox's memory limit is 1.0 GiB" in failed.error
    assert attempts(failed.result_key)[0].missing_inputs is None  # it ran, and failed

    monkeypatch.delenv("ARENA_SANDBOX_MEMORY")
    cached = arena_cli("round", "run", "--track", "tiny", "--quiet")  # a failure is cached without the flag
    assert "3 matches, 3 reused from earlier results; new jobs: none" in cached.output
    assert shown(2)["hungry", "undefended", "white-box"] == failed

    arena_cli("round", "open", "--track", "tiny")
    retried = arena_cli("round", "close", "--retry-failed", "--quiet")

    assert "3 matches, 2 reused from earlier results, 1 replayed; 1 new job:" in retried.output
    assert "1 match: replay: it failed before (retry requested)" in retried.output
    assert "jobs: {'done': 1}" in retried.output
    replayed = shown(3)["hungry", "undefended", "white-box"]
    assert replayed.status == "ok" and replayed.result_key != failed.result_key
    assert shown(1)["hungry", "undefended", "white-box"] == shown(2)["hungry", "undefended", "white-box"] == failed
    history = attempts(replayed.result_key)
    assert [(r.attempt, r.status, r.key) for r in history] == [
        (0, "failed", failed.result_key),
        (1, "ok", replayed.result_key),
    ]
    assert [failures("hungry", number) for number in (1, 2, 3)] == [1, 1, 0]
    board = create_app().test_client()  # the match page links both attempts, once round 3 is published
    assert board.get(f"/api/matches/{history[1].id}").status_code == 403  # the replay waits for its round
    arena_cli("round", "publish", "3")
    page = board.get(f"/api/matches/{history[1].id}").get_json()
    assert page["attempt"] == 1
    assert [(a["id"], a["status"]) for a in page["attempts"]] == [(history[0].id, "failed"), (history[1].id, "ok")]
    assert "Attempt 2 of 2 at this match" in board.get(f"/matches/{history[1].id}").get_data(as_text=True)

    again = arena_cli("round", "run", "--track", "tiny", "--quiet", "--retry-failed")  # nothing failed now
    assert "3 matches, 3 reused from earlier results; new jobs: none" in again.output
    assert shown(4)["hungry", "undefended", "white-box"] == replayed


# --------------------------------------------------------------------------------------------------
# The migration that introduced attempts
# --------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database_at_0002(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database migrated to revision 0002 only: SQLite, or a fresh PostgreSQL database."""

    def at_0002(db: Database) -> Database:
        with db.engine.begin() as connection:
            command.upgrade(migration_config(connection), "0002")
        return db

    if request.param == "sqlite":
        db = at_0002(Database(f"sqlite:///{tmp_path / 'arena.db'}"))
        yield db
        db.dispose()
    else:
        with fresh_postgres_database() as url:
            db = at_0002(Database(url))
            yield db
            db.dispose()


def insert(connection: sa.Connection, table: str, **values: Any) -> int:
    """Insert a row into ``table`` as its schema stands (not as the models say); return its id."""
    types = {dict: sa.JSON, list: sa.JSON, bytes: sa.LargeBinary, datetime: sa.DateTime(timezone=True)}
    columns = [sa.column(name, types.get(type(value))) for name, value in values.items()]
    statement = sa.table(table, sa.column("id"), *columns).insert().values(**values).returning(sa.column("id"))
    return connection.execute(statement).scalar_one()


def test_the_migration_marks_matches_that_never_ran(database_at_0002: Database) -> None:
    now = datetime.now(UTC)
    with database_at_0002.engine.begin() as connection:
        team = insert(connection, "teams", name="red", branch="main", created_at=now)
        version = {"archive": b"zip", "manifest": {}, "valid": True, "status": "valid", "created_at": now}
        ids = {}
        for kind in ("attack", "defense"):
            plugin = insert(connection, "plugins", team_id=team, name=kind, kind=kind, created_at=now)
            ids[kind] = insert(
                connection, "plugin_versions", plugin_id=plugin, content_hash=kind, source=kind, **version
            )
        insert(connection, "artifacts", key="made", kind="substitute", track="tiny", data=b"", meta={}, created_at=now)
        result = {
            "attack_version_id": ids["attack"],
            "defense_version_id": ids["defense"],
            "track": "tiny",
            "threat": "white-box",
            "seed": 0,
            "referee_version": "1",
            "metrics": {},
            "wall_time": 0.0,
            "created_at": now,
        }
        error = "an input could not be made: train-defense failed: time-out"
        insert(connection, "results", key="never-ran", status="failed", error=error, **result)
        insert(connection, "results", key="ran", status="failed", error="RuntimeError: boom", **result)
        insert(connection, "results", key="fine", status="ok", **result)
        job = {"kind": "match", "params": {}, "state": "failed", "attempts": 0, "queued_at": now}
        insert(connection, "jobs", key="never-ran", depends_on=["lost", "made"], **job)

    database_at_0002.upgrade()

    with database_at_0002.session() as session:
        rows = {r.key: (r.content_key, r.attempt, r.missing_inputs) for r in session.scalars(select(Result))}
    assert rows == {"never-ran": ("never-ran", 0, ["lost"]), "ran": ("ran", 0, None), "fine": ("fine", 0, None)}
