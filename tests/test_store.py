"""The store on real databases: migrations, constraints, idempotent inserts, types and cascades.

Every test runs on SQLite (a file) and on PostgreSQL (a fresh database of its own), both migrated by
``Database.upgrade()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from services import fresh_postgres_database
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from arena.store import (
    Artifact,
    Base,
    Database,
    Plugin,
    PluginVersion,
    Result,
    Round,
    RoundEntry,
    RoundMatch,
    Team,
)
from arena.store import db as db_module
from arena.store.db import MIGRATIONS, insert_once
from arena.store.models import utcnow


@pytest.fixture
def versions(database: Database) -> tuple[int, int]:
    """The ids of an attack version and a defense version of one team."""
    with database.session() as session:
        team = Team(name="red")
        attack = PluginVersion(
            plugin=Plugin(team=team, name="fgsm", kind="attack"),
            content_hash="a" * 64,
            source="plugins/attacks/fgsm",
            archive=b"zip",
            manifest={"name": "fgsm"},
        )
        defense = PluginVersion(
            plugin=Plugin(team=team, name="plain", kind="defense"),
            content_hash="d" * 64,
            source="plugins/defenses/plain",
            archive=b"zip",
            manifest={"name": "plain"},
        )
        session.add_all([attack, defense])
        session.flush()
        return attack.id, defense.id


def result_values(key: str, versions: tuple[int, int]) -> dict[str, object]:
    """The columns of a Result row under ``key``."""
    attack_id, defense_id = versions
    return {
        "key": key,
        "attack_version_id": attack_id,
        "defense_version_id": defense_id,
        "track": "digits-linf",
        "threat": "white-box",
        "seed": 0,
        "referee_version": "1",
        "status": "ok",
        "metrics": {"robust_accuracy": 0.5},
    }


def artifact_values(key: str, versions: tuple[int, int]) -> dict[str, object]:
    """The columns of an Artifact row under ``key``."""
    return {
        "key": key,
        "kind": "defense",
        "plugin_version_id": versions[1],
        "track": "digits-linf",
        "data": b"weights",
        "meta": {"epochs": 1},
    }


#: a table keyed by content, and how to fill a row of it
Values = Callable[[str, tuple[int, int]], dict[str, object]]
ROWS = [pytest.param(Result, result_values, id="result"), pytest.param(Artifact, artifact_values, id="artifact")]


def test_upgrade_creates_every_table_and_is_idempotent(database: Database) -> None:
    tables = set(inspect(database.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables

    database.upgrade()

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head


def test_migrated_schema_matches_models(database: Database) -> None:
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_unique_constraints_are_enforced(database: Database, versions: tuple[int, int]) -> None:
    attack_id, _ = versions
    with pytest.raises(IntegrityError), database.session() as session:
        plugin_id = session.get_one(PluginVersion, attack_id).plugin_id
        session.add(PluginVersion(plugin_id=plugin_id, content_hash="a" * 64, source="x", archive=b"", manifest={}))
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Team(name="red"))
    with pytest.raises(IntegrityError), database.session() as session:
        team = session.scalars(select(Team)).one()
        session.add(Plugin(team=team, name="fgsm", kind="attack"))

    with database.session() as session:  # a new hash of the same plugin is a new version
        plugin_id = session.get_one(PluginVersion, attack_id).plugin_id
        session.add(PluginVersion(plugin_id=plugin_id, content_hash="b" * 64, source="x", archive=b"", manifest={}))
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(PluginVersion)) == 3


@pytest.mark.parametrize(("model", "values"), ROWS)
def test_insert_once_writes_one_row(
    database: Database, versions: tuple[int, int], model: type[Result | Artifact], values: Values
) -> None:
    with database.session() as session:
        assert insert_once(session, model, **values("k1", versions)) is True
    with database.session() as session:  # the job is delivered again
        assert insert_once(session, model, **values("k1", versions)) is False
        assert insert_once(session, model, **values("k2", versions)) is True

    with database.session() as session:
        rows = session.scalars(select(model).order_by(model.key)).all()
        assert [row.key for row in rows] == ["k1", "k2"]
        assert rows[0].created_at <= utcnow()


@pytest.mark.parametrize(("model", "values"), ROWS)
def test_insert_once_from_concurrent_workers(
    database: Database,
    versions: tuple[int, int],
    model: type[Result | Artifact],
    values: Values,
) -> None:
    workers = 4
    start = threading.Barrier(workers)

    def worker(_: int) -> bool:
        start.wait(timeout=10)
        with database.session() as session:
            return insert_once(session, model, **values("same", versions))

    with ThreadPoolExecutor(workers) as pool:
        inserted = list(pool.map(worker, range(workers), timeout=30))

    assert sorted(inserted) == [False] * (workers - 1) + [True]
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(model)) == 1


def test_json_and_binary_round_trip(database: Database, versions: tuple[int, int]) -> None:
    samples = os.urandom(300_000)
    metrics = {"n": 100, "robust_accuracy": 0.25, "target_hit_rate": None, "per_class": [1, 2.5], "ok": True}
    with database.session() as session:
        result = Result(**result_values("k", versions) | {"metrics": metrics, "samples": samples})
        session.add_all([result, Round(number=1, tracks=["digits-linf", "mnist-l2"])])

    with database.session() as session:
        result = session.scalars(select(Result)).one()
        assert result.metrics == metrics
        assert result.samples == samples
        assert result.gallery is None
        assert session.scalars(select(Round)).one().tracks == ["digits-linf", "mnist-l2"]


def test_datetimes_come_back_aware_in_utc(database: Database) -> None:
    paris_noon = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    before = utcnow()
    with database.session() as session:
        session.add(Round(number=1, tracks=[], started_at=paris_noon))

    with database.session() as session:
        round_ = session.scalars(select(Round)).one()
        assert round_.started_at == paris_noon
        assert round_.started_at.tzinfo == UTC
        assert round_.started_at.hour == 10
        assert before <= round_.created_at <= utcnow()
        assert round_.finished_at is None

    with pytest.raises(StatementError, match="naive datetime"), database.session() as session:
        session.add(Round(number=2, tracks=[], started_at=datetime(2024, 6, 1, 12, 0)))


def test_deleting_a_round_deletes_its_entries_and_matches(database: Database, versions: tuple[int, int]) -> None:
    attack_id, defense_id = versions
    with database.session() as session:
        match = RoundMatch(
            result_key="k",
            attack_version_id=attack_id,
            defense_version_id=defense_id,
            track="digits-linf",
            threat="white-box",
        )
        entries = [RoundEntry(plugin_version_id=attack_id), RoundEntry(plugin_version_id=defense_id)]
        session.add(Round(number=1, tracks=["digits-linf"], entries=entries, matches=[match]))

    with database.session() as session:
        round_ = session.scalars(select(Round)).one()
        assert {entry.plugin_version.plugin.name for entry in round_.entries} == {"fgsm", "plain"}
        assert round_.matches[0].defense_version.plugin.kind == "defense"
        session.delete(round_)

    with database.session() as session:
        for model in (Round, RoundEntry, RoundMatch):
            assert session.scalar(select(func.count()).select_from(model)) == 0
        assert session.scalar(select(func.count()).select_from(PluginVersion)) == 2


@pytest.mark.service
def test_processes_starting_together_on_postgresql_migrate_once() -> None:
    with fresh_postgres_database() as url:
        databases = [Database(url) for _ in range(3)]
        start = threading.Barrier(len(databases))

        def upgrade(db: Database) -> None:
            start.wait(timeout=10)
            db.upgrade()

        with ThreadPoolExecutor(len(databases)) as pool:
            list(pool.map(upgrade, databases, timeout=30))  # raises what any upgrade raised
        for db in databases:
            db.dispose()


@pytest.mark.service
def test_a_pooled_postgresql_connection_the_server_dropped_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pooled connection is tested only after it idled (a test per session cost a round trip each); one the
    server dropped meanwhile (a restart) is replaced, and the session never sees it."""
    monkeypatch.setattr(db_module, "PING_AFTER", 0.2)
    with fresh_postgres_database() as url:
        database = Database(url)
        try:
            with database.session() as session:
                first = session.scalar(text("SELECT pg_backend_pid()"))
            with database.session() as session:  # back within PING_AFTER: the same connection, untested
                assert session.scalar(text("SELECT pg_backend_pid()")) == first
            admin = Database(url)
            with admin.session() as session:
                assert session.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
            admin.dispose()
            time.sleep(0.3)
            with database.session() as session:
                assert session.scalar(text("SELECT pg_backend_pid()")) != first
        finally:
            database.dispose()
