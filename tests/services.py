"""Real services for tests: PostgreSQL and Redis, found or started, and a fresh database on each per test.

Tests that need PostgreSQL fail, never skip, when none can be had: CI must run them. Point
``ARENA_TEST_POSTGRES_URL`` at a server of your own, or let the machine's cluster be started.
Redis: a database of its own on the machine's server (127.0.0.1:6379) when it answers, else a
``redis-server`` started on a free port (:class:`RedisServer`, which a test can also kill and restart).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
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


# --------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------

#: the machine's Redis; tests claim one of its databases 1-15 (database 0 holds the claims)
MACHINE_REDIS = "redis://127.0.0.1:6379"
REDIS_DATABASES = range(1, 16)


class RedisServer:
    """A ``redis-server`` of a test's own, on a free port, keeping nothing on disk: it can be stopped
    (losing every message and key, the worst case for a broker) and started again on the same port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server on PATH: install it (Debian: apt-get install redis-server)")
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="arena-redis-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of its database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (the server's log, closed with the process)
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.folder / "redis.log").read_text()
                        raise RuntimeError(f"redis-server did not start: {log}") from None
                    time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server (SIGKILL: nothing is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def redis_url() -> Iterator[str]:
    """A Redis database for one test, empty at the start and emptied at the end; yields its URL.

    One of the machine's Redis databases 1-15, claimed in its database 0 so that concurrent test runs
    never share one, when that server answers; else a server of the test's own.
    """
    with redis.Redis.from_url(MACHINE_REDIS, socket_connect_timeout=1) as machine:
        try:
            machine.ping()
        except redis.ConnectionError:
            server = RedisServer()
            server.start()
            try:
                yield server.url
            finally:
                server.close()
            return
        claimed = (n for n in REDIS_DATABASES if machine.set(f"arena-test:db:{n}", os.getpid(), nx=True, ex=3600))
        number = next(claimed, None)
        if number is None:
            raise RuntimeError(f"{MACHINE_REDIS}: databases {REDIS_DATABASES} are all claimed by other test runs")
        with redis.Redis.from_url(f"{MACHINE_REDIS}/{number}") as database:
            database.flushdb()
            try:
                yield f"{MACHINE_REDIS}/{number}"
            finally:
                database.flushdb()
                machine.delete(f"arena-test:db:{number}")
