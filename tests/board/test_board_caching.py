"""The board's caching: ETags, what is kept for long, a running round's refresh.

Over Flask's test client and a real SQLite database (fixtures: tests/board/conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from board_data import APIS, PAGES, Played, match_ids, sign_in
from flask import Flask
from flask.testing import FlaskClient
from test_scoring import Rows

from arena.store import Round

# --------------------------------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------------------------------


def test_responses_carry_etags_and_repeat_requests_get_304(client: FlaskClient, played: Played) -> None:
    for url in [*PAGES, *APIS]:
        first = client.get(url)
        assert first.headers["ETag"], url
        again = client.get(url, headers={"If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304 and again.data == b"", url


def test_only_frozen_data_is_cached_for_long(client: FlaskClient, played: Played) -> None:
    assert client.get("/?round=1").headers["Cache-Control"] == "public, max-age=300"  # published and done
    assert client.get("/api/matrix?round=1").headers["Cache-Control"] == "public, max-age=300"
    for url in ("/", "/?round=2", "/api/leaderboard", "/matrix", "/jobs", "/rounds"):
        assert client.get(url).headers["Cache-Control"] == "no-cache", url  # may change
    (match_id,) = match_ids(client.get("/matrix?round=1").get_data(as_text=True))  # a published match
    assert client.get(f"/matches/{match_id}").headers["Cache-Control"] == "public, max-age=86400"
    image = client.get(f"/matches/{match_id}/gallery/0/clean.png")
    assert image.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_pages_follow_new_results_of_a_running_round(
    client: FlaskClient, instructor: FlaskClient, played: Played, rows: Rows
) -> None:
    before = instructor.get("/api/leaderboard").json
    ids = {"attack_version_id": played.crashy, "defense_version_id": played.plain}
    rows.result(played.pending, [1, 1, 1, 1], **ids, track="digits", threat="white-box")
    after = instructor.get("/api/leaderboard").json
    assert before["cells"]["pending"] == 1 and after["cells"] == {"ok": 3, "failed": 1, "pending": 0}
    with rows.db.session() as s:  # the admin publishes the finished round
        round_ = s.get(Round, played.second)
        round_.status, round_.published, round_.finished_at = "done", True, datetime.now(UTC)
    frozen = client.get("/api/leaderboard?round=2")
    assert frozen.json["round"]["frozen"] and frozen.json["cells"] == after["cells"]
    assert frozen.headers["Cache-Control"] == "public, max-age=300"


def test_a_running_round_is_checked_again_only_after_the_refresh_time(app: Flask, played: Played, rows: Rows) -> None:
    client = app.test_client()
    sign_in(app, client)  # the instructor: the running round's scores are not public
    standings = app.extensions["arena_standings"]
    standings.refresh = 3600.0
    assert client.get("/api/leaderboard").json["cells"]["pending"] == 1
    ids = {"attack_version_id": played.crashy, "defense_version_id": played.plain}
    rows.result(played.pending, [1, 1, 1, 1], **ids, track="digits", threat="white-box")
    assert client.get("/api/leaderboard").json["cells"]["pending"] == 1  # checked less than an hour ago
    standings.refresh = 0.0
    assert client.get("/api/leaderboard").json["cells"]["pending"] == 0


def test_while_one_thread_scores_a_round_the_others_get_its_last_standings(app: Flask, played: Played) -> None:
    standings, db = app.extensions["arena_standings"], app.extensions["arena_db"]
    with db.session() as s:
        before = standings.of(s, s.get(Round, played.second))
    ids = {"attack_version_id": played.crashy, "defense_version_id": played.plain}
    Rows(db).result(played.pending, [1, 1, 1, 1], **ids, track="digits", threat="white-box")
    scoring = standings._scoring[played.second]
    scoring.acquire()  # as if another request were scoring the round's new state right now
    try:
        with db.session() as s:
            assert standings.of(s, s.get(Round, played.second)) is before
    finally:
        scoring.release()
    with db.session() as s:
        after = standings.of(s, s.get(Round, played.second))
    assert after.cells["pending"] == 0 and after.serial != before.serial
