"""Who sees what on the board: team-private logs, sign-in, the embargo of unpublished rounds.

Over Flask's test client and a real SQLite database (fixtures: tests/board/conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from board_data import ESCAPED, EVIL, BoardRows, Played, failed_match, match_ids, plugin_id, sign_in
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from test_scoring import Rows

from arena.results import access
from arena.store import PluginVersion, Result, Round, RoundMatch

# --------------------------------------------------------------------------------------------------
# Team-private logs: a team's token shows its own plugins' logs, the instructor's every team's, the public none
# --------------------------------------------------------------------------------------------------


def logs_seen(app: Flask, client: FlaskClient) -> dict[str, bool]:
    """Which of the played round's logs ``client`` is shown, as page and as API."""
    match_id, plain = failed_match(app), plugin_id(client, "plain")
    match_page = client.get(f"/matches/{match_id}").get_data(as_text=True)
    jobs_page = client.get("/jobs?round=2").get_data(as_text=True)
    (version,) = client.get(f"/api/plugins/{plain}").json["versions"]
    return {
        "attack's match log": f"log {ESCAPED}" in match_page
        and client.get(f"/api/matches/{match_id}").json.get("log_tail") is not None,
        "defense's training log": f"trace {ESCAPED}" in jobs_page
        and version["training_failures"][0]["log_tail"] is not None,
    }


def test_each_team_sees_its_own_logs_and_no_other_teams(app: Flask, played: Played) -> None:
    public, attacker, defender, bystander, instructor = (app.test_client() for _ in range(5))
    sign_in(app, attacker, EVIL)  # the team of the crashy attack, whose match failed
    sign_in(app, defender, "blue")  # the team of the defense whose training failed
    sign_in(app, bystander, "red")
    sign_in(app, instructor)
    assert logs_seen(app, public) == {"attack's match log": False, "defense's training log": False}
    assert logs_seen(app, attacker) == {"attack's match log": True, "defense's training log": False}
    assert logs_seen(app, defender) == {"attack's match log": False, "defense's training log": True}
    assert logs_seen(app, bystander) == {"attack's match log": False, "defense's training log": False}
    assert logs_seen(app, instructor) == {"attack's match log": True, "defense's training log": True}
    assert "signed in as blue" in defender.get("/").get_data(as_text=True)
    assert "signed in as the instructor" in instructor.get("/rules").get_data(as_text=True)


def test_the_public_sees_every_failure_reason_once_published(client: FlaskClient, played: Played, rows: Rows) -> None:
    assert "&lt;i&gt;out of memory&lt;/i&gt;" in client.get("/jobs?round=2").get_data(as_text=True)  # progress
    assert client.get(f"/matches/{failed_match(client.application)}").status_code == 403  # not published yet
    with rows.db.session() as s:
        round_ = s.get(Round, played.second)
        round_.status, round_.published = "done", True
    page = client.get(f"/matches/{failed_match(client.application)}").get_data(as_text=True)
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "sign in" in page and "log " + ESCAPED not in page


def test_a_new_token_retires_the_old_one_and_its_sessions(app: Flask, played: Played) -> None:
    browser = app.test_client()
    old = sign_in(app, browser, "blue")
    assert logs_seen(app, browser)["defense's training log"]
    sign_in(app, app.test_client(), "blue")  # `arena team token blue` again
    assert not logs_seen(app, browser)["defense's training log"], "the old session ends with its token"
    again = app.test_client().post("/signin", data={"token": old})
    assert again.status_code == 403 and "not known" in again.get_data(as_text=True)
    assert app.test_client().post("/signin", data={"token": ""}).status_code == 403


def test_a_signed_in_page_is_never_kept_for_others_and_no_page_shows_a_token(app: Flask, played: Played) -> None:
    signed_in, public = app.test_client(), app.test_client()
    token = sign_in(app, signed_in, "blue")
    (published,) = match_ids(public.get("/matrix?round=1").get_data(as_text=True))
    for url in ("/", "/?round=1", "/matrix?round=1", "/rounds", "/jobs", f"/matches/{published}"):
        private, shared = signed_in.get(url), public.get(url)
        assert private.headers["Cache-Control"] == "private, no-cache", url
        assert "private" not in shared.headers["Cache-Control"] and "Cookie" in shared.headers["Vary"], url
        assert "signed in as" not in shared.get_data(as_text=True), f"{url}: a page rendered for a team was kept"
        for body in (private.get_data(as_text=True), shared.get_data(as_text=True)):
            assert token not in body and access.digest(token) not in body, url
    assert signed_in.get("/signout").status_code == 302
    assert not logs_seen(app, signed_in)["defense's training log"]


def test_a_log_shown_to_its_team_names_no_server_path() -> None:
    log = (
        'Traceback (most recent call last):\n  File "/srv/arena/home/plugin-cache/0123456789abcdef/attack.py", '
        'line 3, in run\n  File "/opt/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 9\n'
        '  File "/usr/lib/python3.11/multiprocessing/connection.py", line 384, in _send\n'
        '  File "/srv/arena/src/arena/play/match.py", line 20, in play'
    )
    shown = access.relative_paths(log)
    assert "/srv" not in shown and "/opt" not in shown and "/usr" not in shown
    assert '"attack.py", line 3' in shown and '"torch/nn/modules/module.py"' in shown
    assert '"multiprocessing/connection.py"' in shown and '"arena/play/match.py"' in shown


# --------------------------------------------------------------------------------------------------
# Embargo: an unpublished round's scores are the instructor's, and each team's own matches its team's
# --------------------------------------------------------------------------------------------------


def result_ids(app: Flask, round_number: int) -> set[int]:
    """The ids of the results a round's matrix shows."""
    with app.extensions["arena_db"].session() as session:
        query = select(Result.id).join(RoundMatch, RoundMatch.result_key == Result.key).join(Round)
        return set(session.scalars(query.where(Round.number == round_number)))


def test_the_public_sees_no_score_of_an_unpublished_round_anywhere(
    app: Flask, client: FlaskClient, played: Played
) -> None:
    front = client.get("/").get_data(as_text=True)
    assert "Round 1: the latest published results" in front and "75.0%" in front  # round 1, published
    assert "Round 2 · running" in front and "3 of 4 matches played" in front and "(1 failed)" in front
    assert "50.0%" not in front  # madry's round-2 score
    data = client.get("/api/leaderboard").json
    assert (
        data["round"]["number"] == 1 and data["upcoming"]["number"] == 2 and data["upcoming"]["cells"]["pending"] == 1
    )
    assert {t["team"] for t in data["upcoming"]["teams"]} == {"red", "blue", EVIL}
    withheld = client.get("/api/leaderboard?round=2").json
    assert withheld["withheld"] and withheld["boards"] == [] and withheld["cells"]["ok"] == 2  # progress only
    assert "scores appear once it is done and published" in client.get("/?round=2").get_data(as_text=True)
    assert "scores are shown once the instructor publishes it" in client.get("/matrix?round=2").get_data(as_text=True)
    assert client.get("/api/matrix?round=2").json["cells"] == []
    assert client.get("/api/matrix?round=2&track=digits&threat=white-box").status_code == 200
    assert client.get("/api/game?round=2").json["game"] is None
    assert (
        client.get("/api/lessons?round=2").json["lessons"] == [] and client.get("/api/lessons?round=2").json["withheld"]
    )
    history = client.get("/api/rounds").json
    assert [(r["number"], r["withheld"], r["leaders"] == []) for r in history["rounds"]] == [
        (2, True, True),
        (1, False, False),
    ]
    assert history["history"]["rounds"] == [1]
    for table in ("rankings", "matrix", "samples"):
        assert client.get(f"/export/{table}.csv?round=2").status_code == 403
    fgsm = plugin_id(client, "fgsm")
    (version,) = client.get(f"/api/plugins/{fgsm}").json["versions"]
    assert [r["threat"] for r in version["results"]] == ["gray-box"] and version["withheld"] == 2
    assert "2 more results in rounds not yet published" in client.get(f"/plugins/{fgsm}").get_data(as_text=True)
    hidden = result_ids(app, 2) - result_ids(app, 1)
    assert len(hidden) == 3
    for result_id in hidden:
        assert client.get(f"/matches/{result_id}").status_code == 403
        assert client.get(f"/api/matches/{result_id}").status_code == 403
        assert client.get(f"/matches/{result_id}/gallery/0/clean.png").status_code == 403
    pages = ["/", "/?round=2", "/matrix?round=2", "/rounds", "/game?round=2", "/lessons?round=2", "/jobs?round=2"]
    pages.append(f"/plugins/{fgsm}")
    for url in pages + [u.replace("/", "/api/", 1) for u in pages[2:]]:
        body = client.get(url).get_data(as_text=True)
        assert not any(f"/matches/{i}" in body for i in hidden), url


def test_a_team_sees_its_own_matches_of_an_unpublished_round_and_the_instructor_all(
    app: Flask, instructor: FlaskClient, played: Played
) -> None:
    red = app.test_client()
    sign_in(app, red, "red")  # fgsm's team: fgsm played madry and plain in round 2; crashy (not red's) played madry
    fgsm = plugin_id(red, "fgsm")
    (version,) = red.get(f"/api/plugins/{fgsm}").json["versions"]
    assert sorted(r["threat"] for r in version["results"]) == ["gray-box", "white-box", "white-box"]
    assert version["withheld"] == 0
    with app.extensions["arena_db"].session() as session:
        crashy_madry = session.scalar(select(Result.id).where(Result.attack_version_id == played.crashy))
    for r in version["results"]:
        assert red.get(f"/matches/{r['id']}").status_code == 200
    assert red.get(f"/matches/{crashy_madry}").status_code == 403  # another team's match
    assert red.get("/api/leaderboard?round=2").json["withheld"]  # the board waits for publication, for teams too
    assert red.get("/export/rankings.csv?round=2").status_code == 403
    assert not instructor.get("/api/leaderboard?round=2").json["withheld"]
    assert instructor.get("/api/leaderboard").json["round"]["number"] == 2  # the newest round, published or not
    assert instructor.get(f"/matches/{crashy_madry}").status_code == 200
    assert instructor.get("/export/rankings.csv?round=2").status_code == 200


def test_the_front_page_shows_the_open_round_its_close_time_and_validated_versions(
    client: FlaskClient, played: Played, rows: BoardRows
) -> None:
    with rows.db.session() as s:  # round 2 ends and is published; round 3 opens for two days
        round_ = s.get(Round, played.second)
        round_.status, round_.published = "done", True
    third = rows.round(3, status="open")
    closes = datetime.now(UTC) + timedelta(days=2, minutes=1)
    with rows.db.session() as s:
        s.get(Round, third).closes_at = closes
    newer = rows.version("red", "fgsm", "attack", commit="fedcba9876543210")  # red pushed a new fgsm
    rows.version("green", "broken", "defense", valid=False, errors="SyntaxError")
    data = client.get("/api/leaderboard").json
    assert data["round"]["number"] == 2 and data["upcoming"]["number"] == 3
    assert data["upcoming"]["minutes_left"] in (2 * 24 * 60, 2 * 24 * 60 + 1)
    teams = {t["team"]: t["plugins"] for t in data["upcoming"]["teams"]}
    assert "green" not in teams  # nothing valid yet
    (fgsm,) = [p for p in teams["red"] if p["plugin"] == "fgsm"]
    with rows.db.session() as s:
        assert fgsm["version"] == s.get(PluginVersion, newer).content_hash[:12]
    assert [p["plugin"] for p in teams["blue"]] == ["madry", "plain"]
    page = client.get("/").get_data(as_text=True)
    assert "Round 3 · open" in page and closes.strftime("%Y-%m-%d %H:%M") in page and "2 d 0 h left" in page
    assert "Round 2: the latest published results" in page and "Validated so far" in page
