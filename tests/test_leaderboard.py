"""The web board's pages and JSON API, with Flask's test client over a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from test_scoring import Rows

from arena.config import Settings
from arena.scoring import round_standings
from arena.store import Database
from leaderboard import create_app

EVIL = "<script>alert(1)</script>"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """A board over a fresh database at the newest schema."""
    app = create_app({"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'arena.db'}"})
    database: Database = app.extensions["arena_db"]
    database.upgrade()
    yield app
    database.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def played(app: Flask) -> Rows:
    """Two rounds: round 1 with one match, round 2 with an ok, a failed and a pending cell."""
    rows = Rows(app.extensions["arena_db"])
    rows.track("digits", clean_floor=0.8)
    fgsm, crashy = rows.version("red", "fgsm", "attack"), rows.version(EVIL, "crashy", "attack")
    madry, plain = rows.version("blue", "madry", "defense"), rows.version("blue", "plain", "defense")
    first = rows.round(1)
    rows.match(first, fgsm, madry, [1, 1, 1, 0], threat="gray-box")
    second = rows.round(2)
    rows.match(second, fgsm, madry, [1, 1, 0, 0])
    rows.match(second, fgsm, plain, [0, 0, 0, 1], clean=[0, 1, 1, 1])
    rows.match(second, crashy, madry, status="failed", error="<b>boom</b>")
    rows.match(second, crashy, plain, status="pending")
    return rows


def test_database_url_defaults_to_the_arena_settings(arena_home: Path) -> None:
    app = create_app({"TESTING": True})
    assert app.config["DATABASE_URL"] == Settings.from_env().database_url
    app.extensions["arena_db"].dispose()


def test_empty_database_shows_a_friendly_page(client: FlaskClient) -> None:
    for page in ("/", "/matrix"):
        response = client.get(page)
        assert response.status_code == 200
        assert b"No round has been played yet" in response.data
    assert client.get("/api/leaderboard").json == {"rounds": [], "round": None, "boards": []}
    assert client.get("/api/matrix").json["cells"] == []


def test_overview_shows_the_latest_round_or_the_one_asked_for(client: FlaskClient, played: Rows) -> None:
    page = client.get("/").get_data(as_text=True)
    assert "digits · white-box" in page and "madry" in page and "plain" in page
    assert "50.0%" in page  # madry's worst-case robust accuracy in round 2
    older = client.get("/?round=1").get_data(as_text=True)
    assert "digits · gray-box" in older and "75.0%" in older and "white-box" not in older


def test_api_gives_the_overviews_data(app: Flask, client: FlaskClient, played: Rows) -> None:
    data = client.get("/api/leaderboard").json
    assert data["rounds"] == [2, 1]
    assert data["round"]["number"] == 2 and data["round"]["status"] == "running"
    with app.extensions["arena_db"].session() as s:
        assert data["boards"] == [board.as_dict() for board in round_standings(s, 2)]
    (board,) = data["boards"]
    assert [d["entry"]["plugin"] for d in board["defenses"]] == ["madry", "plain"]
    assert board["defenses"][1]["below_floor"]  # plain: clean 0.75 < 0.8


def test_unknown_rounds_are_not_found(client: FlaskClient, played: Rows) -> None:
    for url in ("/?round=7", "/?round=abc", "/matrix?round=7", "/matrix?track=nowhere"):
        assert client.get(url).status_code == 404, url
    response = client.get("/api/leaderboard?round=7")
    assert response.status_code == 404 and "no round 7" in response.json["error"]
    assert client.get("/api/matrix?round=2&threat=black-box").status_code == 404


def test_matrix_colours_each_cell_and_shows_its_number(client: FlaskClient, played: Rows) -> None:
    page = client.get("/matrix").get_data(as_text=True)
    assert 'style="background: hsl(60, 70%, 78%)">50.0%' in page  # fgsm vs madry: robust 0.5
    assert 'style="background: hsl(30, 70%, 78%)">25.0%' in page  # fgsm vs plain: robust 0.25
    assert ">failed<" in page and ">pending<" in page
    success = client.get("/matrix?round=2&track=digits&threat=white-box&metric=success_rate")
    assert 'hsl(40, 70%, 78%)">66.7%' in success.get_data(as_text=True)  # fgsm vs plain: 2 breaks of 3 clean
    assert client.get("/matrix?metric=queries").status_code == 400


def test_api_matrix_gives_the_pages_data(client: FlaskClient, played: Rows) -> None:
    data = client.get("/api/matrix?round=2&metric=success_rate").json
    assert (data["track"], data["threat"], data["metric"]) == ("digits", "white-box", "success_rate")
    assert data["boards"] == [{"track": "digits", "threat": "white-box"}]
    assert [a["plugin"] for a in data["attacks"]] == ["fgsm", "crashy"]
    assert [d["plugin"] for d in data["defenses"]] == ["madry", "plain"]
    failed, pending = data["cells"][1]
    assert (failed["status"], failed["error"], pending["status"]) == ("failed", "<b>boom</b>", "pending")


def test_names_and_errors_from_plugins_are_escaped(client: FlaskClient, played: Rows) -> None:
    for url in ("/", "/matrix"):
        page = client.get(url).get_data(as_text=True)
        assert EVIL not in page and "<b>boom" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in client.get("/matrix").get_data(as_text=True)


def test_the_board_is_read_only(client: FlaskClient, played: Rows) -> None:
    for url in ("/", "/matrix", "/api/leaderboard", "/api/matrix"):
        assert client.post(url).status_code == 405
