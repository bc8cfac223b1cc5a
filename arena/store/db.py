"""The database handle: one engine and session factory per URL, SQLite or PostgreSQL alike."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from arena.store.models import Base

#: the Alembic environment and its revisions, shipped inside the package
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: key of the PostgreSQL advisory lock that lets one process at a time migrate
_MIGRATION_LOCK = 0x4152454E41  # "ARENA"

#: seconds a pooled connection may idle before its next checkout tests it
PING_AFTER = 1.0

#: INSERT constructs that know ON CONFLICT, by dialect name
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class Database:
    """Engine and sessions for one database URL.

    >>> db = Database("sqlite:///:memory:")
    >>> with db.session() as s:   # commits on success, rolls back on error
    ...     pass
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        os.register_at_fork(after_in_child=self._after_fork)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back on an exception."""
        with self._sessions.begin() as session:
            yield session

    def upgrade(self) -> None:
        """Migrate the schema to the newest revision (``alembic upgrade head``); harmless when current.

        On PostgreSQL the whole upgrade is one transaction under an advisory lock, so processes that
        start together migrate once; on SQLite let one process migrate before the others start.
        """
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            command.upgrade(migration_config(connection), "head")

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def _after_fork(self) -> None:
        # A forked child must not share the parent's connections (Celery prefork, multiprocessing).
        self.engine.dispose(close=False)


def migration_config(connection: Connection) -> Config:
    """An Alembic configuration for the arena's migrations that runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def insert_once(session: Session, model: type[Base], **values: Any) -> bool:
    """Insert a row of ``model`` (a table with a unique ``key``) unless a row with that key exists.

    The database decides (``INSERT ... ON CONFLICT (key) DO NOTHING``), so a redelivered job, or two
    workers at once, leave exactly one row. Returns True when this call inserted it.
    """
    table = model.__table__
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERTS:
        raise NotImplementedError(f"insert_once supports {sorted(_INSERTS)}, not {dialect}")
    statement = (
        _INSERTS[dialect](table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[table.c.key])
        .returning(*table.primary_key.columns)  # a row back only when one went in
    )
    return session.execute(statement).first() is not None


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection on checkout when it has idled over :data:`PING_AFTER` seconds, replacing it
    when the server dropped it (a restarted PostgreSQL).

    ``pool_pre_ping`` tests every checkout: a round trip per session, a tenth of a worker's time in a round
    of short matches, whose sessions follow each other within milliseconds.
    """

    @event.listens_for(engine, "checkin")
    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in", -math.inf) <= PING_AFTER:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # whatever the driver raises for a dead connection: the pool connects anew
            raise DisconnectionError(f"a pooled connection was dropped: {exc}") from exc


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API objects)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
