"""The board's fixtures: a board over a fresh database, clients (public and the instructor's), rows, a played round."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from board_data import BoardRows, Played, sign_in
from flask import Flask
from flask.testing import FlaskClient
from test_scoring import Rows

from arena.store import Database
from leaderboard import create_app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """A board over a fresh database at the newest schema."""
    home = tmp_path / "home"
    config = {"DATABASE_URL": f"sqlite:///{tmp_path / 'arena.db'}", "ARENA_HOME": str(home), "STANDINGS_REFRESH": 0}
    app = create_app({"TESTING": True, **config})
    database: Database = app.extensions["arena_db"]
    database.upgrade()
    yield app
    database.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def instructor(app: Flask) -> FlaskClient:
    """A client signed in as the instructor: it sees every team's logs."""
    signed_in = app.test_client()
    sign_in(app, signed_in)
    return signed_in


@pytest.fixture
def rows(app: Flask) -> BoardRows:
    return BoardRows(app.extensions["arena_db"])


@pytest.fixture
def played(rows: Rows) -> Played:
    """Round 1 (done, published) with one match; round 2 (running) with an ok, a failed and a pending cell."""
    return Played(rows)
