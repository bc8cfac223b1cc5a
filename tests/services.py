"""Real services for tests: a PostgreSQL server, found or started, and a fresh database on it per test.

Tests that need PostgreSQL fail, never skip, when none can be had: CI must run them. Point
``ARENA_TEST_POSTGRES_URL`` at a server of your own, or let the machine's cluster be started.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

#: the machine's own server (trust authentication), used when ``ARENA_TEST_POSTGRES_URL`` is unset
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: where Debian and Ubuntu keep one folder per installed PostgreSQL version
CLUSTERS = Path("/etc/postgresql")

#: how long a started cluster may take to accept connections
START_SECONDS = 30.0


def postgres_url() -> str:
    """The URL of a reachable PostgreSQL for tests; starts the machine's cluster if it must.

    Raises RuntimeError, saying what was tried, when no server answers.
    """
    url = os.environ.get("ARENA_TEST_POSTGRES_URL")
    if url:
        return url
    error = _probe(DEFAULT_POSTGRES_URL)
    if error is None:
        return DEFAULT_POSTGRES_URL
    report = _start_cluster()
    error = _probe(DEFAULT_POSTGRES_URL)
    if error is None:
        return DEFAULT_POSTGRES_URL
    raise RuntimeError(
        f"no PostgreSQL for the tests: {DEFAULT_POSTGRES_URL} does not answer ({error}); {report}. "
        "Start a server, or set ARENA_TEST_POSTGRES_URL to a SQLAlchemy URL of one."
    )


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, uniquely named, empty database on the test server; yields its URL, drops it afterwards."""
    server = make_url(postgres_url())
    name = f"arena_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _probe(url: str) -> str | None:
    """None when ``url`` answers a query, else why not."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as error:
        return str(error.orig).strip() or type(error.orig).__name__
    finally:
        engine.dispose()
    return None


@functools.cache
def _start_cluster() -> str:
    """Start the newest installed cluster once per test session and wait for it; says what happened."""
    versions = sorted((p.name for p in CLUSTERS.glob("*") if p.name.isdigit()), key=int)
    if not versions:
        return f"no cluster to start: {CLUSTERS} lists no PostgreSQL version"
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    try:
        started = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{' '.join(command)}` failed: {error}"
    if started.returncode == 0:
        deadline = time.monotonic() + START_SECONDS
        while _probe(DEFAULT_POSTGRES_URL) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
    output = (started.stdout + started.stderr).strip() or "no output"
    return f"ran `{' '.join(command)}` (exit {started.returncode}: {output})"
