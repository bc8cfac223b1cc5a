"""The web board's pages and JSON API, with Flask's test client over a real SQLite database."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from test_scoring import Rows

from arena import access
from arena.cli import main
from arena.config import Settings
from arena.hookspecs import THREATS
from arena.scoring import round_standings
from arena.store import Database, PluginVersion, Result, Round, RoundMatch, Team
from arena.tracks import TRACKS
from leaderboard import create_app
from leaderboard.caching import Recent

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

#: every page, and its twin under /api/ (the API's names differ only for the overview)
PAGES = ["/", "/matrix", "/rounds", "/teams", "/status", "/jobs", "/rules"]
APIS = [
    "/api/",
    "/api/leaderboard",
    "/api/matrix",
    "/api/rounds",
    "/api/teams",
    "/api/status",
    "/api/jobs",
    "/api/rules",
]
#: when the test's verdicts were reached
VALIDATED = datetime(2025, 1, 2, 9, 30, tzinfo=UTC)


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


def sign_in(app: Flask, client: FlaskClient, team: str | None = None) -> str:
    """Sign ``client`` in with a new token of ``team`` (None: the instructor's); return the token."""
    with app.extensions["arena_db"].session() as session:
        team_id = None if team is None else session.scalar(select(Team.id).where(Team.name == team))
        token = access.issue(session, team_id)
    assert client.post("/signin", data={"token": token}).status_code == 302
    return token


@pytest.fixture
def instructor(app: Flask) -> FlaskClient:
    """A client signed in as the instructor: it sees every team's logs."""
    signed_in = app.test_client()
    sign_in(app, signed_in)
    return signed_in


class BoardRows(Rows):
    """Rows whose plugin versions also carry what a sync records: status, checks, log tail, validation time."""

    def version(
        self,
        team: str,
        plugin: str,
        kind: str,
        commit: str | None = None,
        *,
        valid: bool = True,
        errors: str | None = None,
        status: str | None = None,
        checks: dict[str, Any] | None = None,
        log_tail: str | None = None,
        evaluated_at: datetime | None = None,
    ) -> int:
        """A new version; ``status`` defaults to what ``valid`` says, and a verdict gets a validation time."""
        status = status or ("valid" if valid else "invalid")
        version_id = super().version(team, plugin, kind, commit, valid=status == "valid", errors=errors)
        with self.db.session() as s:
            row = s.get(PluginVersion, version_id)
            row.status, row.checks, row.log_tail = status, checks, log_tail
            row.evaluated_at = evaluated_at or (VALIDATED if status in ("valid", "invalid") else None)
        return version_id

    def withdraw(self, version_id: int, at: datetime) -> None:
        """Withdraw the plugin of a version, as a sync does when its folder leaves the repository."""
        with self.db.session() as s:
            s.get(PluginVersion, version_id).plugin.withdrawn_at = at


@pytest.fixture
def rows(app: Flask) -> BoardRows:
    return BoardRows(app.extensions["arena_db"])


class Played:
    """Ids of what the ``played`` fixture wrote."""

    def __init__(self, rows: Rows) -> None:
        rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
        self.fgsm = rows.version("red", "fgsm", "attack", commit="0123456789abcdef")
        self.crashy = rows.version(EVIL, "crashy", "attack")
        self.madry = rows.version("blue", "madry", "defense")
        self.plain = rows.version("blue", "plain", "defense")
        self.first = rows.round(1, status="done", published=True)
        rows.match(self.first, self.fgsm, self.madry, [1, 1, 1, 0], threat="gray-box")
        self.second = rows.round(2)
        rows.match(self.second, self.fgsm, self.madry, [1, 1, 0, 0])
        rows.match(self.second, self.fgsm, self.plain, [0, 0, 0, 1], clean=[0, 1, 1, 1])
        rows.match(self.second, self.crashy, self.madry, status="failed", error="<b>boom</b>", log_tail=f"log {EVIL}")
        self.pending = rows.match(self.second, self.crashy, self.plain, status="pending")
        self.broken_job = rows.job(
            self.second, "train-defense", "failed", params={"track": "digits", "defense": self.plain},
            error="<i>out of memory</i>", log_tail=f"trace {EVIL}", attempts=2, worker="gpu-1",
        )  # fmt: skip
        rows.job(self.second, "match", "done", params={"track": "digits", "threat": "white-box", "attack": self.fgsm})
        rows.job(self.second, "match", "queued", params={"track": "digits", "attack": self.crashy})


@pytest.fixture
def played(rows: Rows) -> Played:
    """Round 1 (done, published) with one match; round 2 (running) with an ok, a failed and a pending cell."""
    return Played(rows)


def match_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/matches/(\d+)"', page)]


# --------------------------------------------------------------------------------------------------
# Empty states and errors
# --------------------------------------------------------------------------------------------------


def test_database_url_defaults_to_the_arena_settings(arena_home: Path) -> None:
    app = create_app({"TESTING": True})
    assert app.config["DATABASE_URL"] == Settings.from_env().database_url
    assert app.config["ARENA_HOME"] == str(Settings.from_env().home)
    app.extensions["arena_db"].dispose()


def test_an_empty_database_gives_friendly_pages(client: FlaskClient) -> None:
    for page in ("/", "/matrix", "/rounds"):
        response = client.get(page)
        assert response.status_code == 200, page
        assert b"No round has been played yet" in response.data
    assert b"No team has submitted a plugin yet" in client.get("/teams").data
    assert b"there are no jobs" in client.get("/jobs").data
    empty = {"rounds": [], "round": None, "cells": None, "withheld": False, "boards": [], "upcoming": None}
    sorting = {"q": "", "dsort": "rank", "asort": "rank"}
    assert client.get("/api/leaderboard").json == empty | sorting | {"instructor": False, "left": None, "refresh": None}
    assert client.get("/api/matrix").json["cells"] == []
    assert client.get("/api/rounds").json["history"] is None
    assert client.get("/api/teams").json == {"teams": []}
    assert client.get("/api/jobs").json["round"] is None
    assert [t["name"] for t in client.get("/api/rules").json["tracks"]] == sorted(TRACKS)


def test_unknown_ids_and_rounds_are_not_found(instructor: FlaskClient, played: Played) -> None:
    (match_id,) = match_ids(instructor.get("/matrix?round=1").get_data(as_text=True))
    missing = [
        "/?round=7", "/?round=abc", "/matrix?round=7", "/matrix?track=nowhere", "/rounds?track=nowhere",
        "/jobs?round=9", "/matches/999", "/matches/999/gallery/0/clean.png", "/teams/999", "/plugins/999", "/nowhere",
        f"/matches/{match_id}/gallery/99/clean.png", f"/matches/{match_id}/gallery/0/bogus.png",
    ]  # fmt: skip
    for url in missing:
        response = instructor.get(url)
        assert response.status_code == 404, url
        assert b"Arena" in response.data and b"Not Found" in response.data, url  # the board's own page
    for url in ("/api/leaderboard?round=7", "/api/matches/999", "/api/plugins/999", "/api/teams/999", "/api/nowhere"):
        response = instructor.get(url)
        assert response.status_code == 404 and response.json["status"] == 404, url
    assert "no round 7" in instructor.get("/api/leaderboard?round=7").json["error"]
    assert instructor.get("/api/matrix?round=2&threat=black-box").status_code == 404
    assert instructor.get("/matrix?metric=queries").status_code == 400
    assert "metric must be one of" in instructor.get("/api/matrix?metric=queries").json["error"]


def test_lessons_read_no_teams_plugins(client: FlaskClient, instructor: FlaskClient, played: Played) -> None:
    """The lessons read the built-in plugins only: a round of teams' plugins leaves every claim unplayed."""
    data = client.get("/api/lessons").json
    assert data["round"]["number"] == 1 and data["track"] == "digits" and not data["withheld"]
    assert {lesson["verdict"] for lesson in data["lessons"]} == {"not played"}
    assert all(f["value"] is None for lesson in data["lessons"] for f in lesson["figures"])
    assert "FGSM fools an undefended network" in client.get("/lessons").get_data(as_text=True)
    assert instructor.get("/api/lessons?round=2").json["track"] == "digits"
    assert instructor.get("/api/lessons?round=1&track=nowhere").status_code == 404


def test_the_board_is_read_only(client: FlaskClient, played: Played) -> None:
    for url in [*PAGES, *APIS, "/matches/1", "/api/matches/1", "/teams/1", "/plugins/1"]:
        assert client.post(url).status_code == 405, url
        assert client.delete(url).status_code == 405, url


def test_every_page_and_api_answers(client: FlaskClient, played: Played) -> None:
    for url in [*PAGES, *APIS, "/?round=1", "/api/leaderboard?round=1"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.mimetype == ("application/json" if url.startswith("/api/") else "text/html"), url
    assert set(client.get("/api/").json) >= {"leaderboard", "matrix", "rounds", "match", "teams", "plugin", "jobs"}


# --------------------------------------------------------------------------------------------------
# Overview and matrix
# --------------------------------------------------------------------------------------------------


def test_overview_shows_the_latest_round_or_the_one_asked_for(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get("/").get_data(as_text=True)
    assert "digits · white-box" in page and "madry" in page and "plain" in page
    assert "50.0%" in page  # madry's worst-case robust accuracy in round 2
    assert "below floor" in page  # plain: clean 0.75 < 0.8
    assert "0123456789ab"[:8] in page  # fgsm's commit
    older = instructor.get("/?round=1").get_data(as_text=True)
    assert "digits · gray-box" in older and "75.0%" in older and "white-box" not in older


def test_a_running_round_says_so_with_its_progress(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get("/").get_data(as_text=True)
    assert "Round 2 is still running" in page and "3 of 4 matches played" in page and "(1 failed)" in page
    assert "still running" not in instructor.get("/?round=1").get_data(as_text=True)
    assert instructor.get("/api/leaderboard").json["cells"] == {"ok": 2, "failed": 1, "pending": 1}


def test_randomized_defenses_are_flagged_with_their_draws(instructor: FlaskClient, rows: Rows) -> None:
    attack, magnet = rows.version("red", "pgd", "attack"), rows.version("blue", "magnet", "defense")
    rows.match(rows.round(1), attack, magnet, [1, 0], metrics={"draws": 5})
    assert "5 draws" in instructor.get("/").get_data(as_text=True)
    assert instructor.get("/api/leaderboard").json["boards"][0]["defenses"][0]["draws"] == 5


def test_api_gives_the_overviews_data(app: Flask, instructor: FlaskClient, played: Played) -> None:
    data = instructor.get("/api/leaderboard").json
    assert data["rounds"] == [2, 1]
    assert data["round"]["number"] == 2 and data["round"]["status"] == "running" and not data["round"]["frozen"]
    with app.extensions["arena_db"].session() as s:
        expected = [board.as_dict() for board in round_standings(s, played.second)]
    for board in expected:
        del board["matrix"]  # the matrix has its own page and API
    assert data["boards"] == expected
    (board,) = data["boards"]
    assert [d["entry"]["plugin"] for d in board["defenses"]] == ["madry", "plain"]
    assert board["defenses"][1]["below_floor"]


def test_matrix_colours_each_cell_shows_its_number_and_links_its_match(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get("/matrix").get_data(as_text=True)
    cell = r'<td style="background: hsl\({hue}, 70%, 78%\)"><a href="/matches/(\d+)">{value}</a></td>'
    assert re.search(cell.format(hue=60, value="50.0%"), page)  # fgsm vs madry: robust 0.5
    assert re.search(cell.format(hue=30, value="25.0%"), page)  # fgsm vs plain: robust 0.25
    assert ">failed</a>" in page and ">pending<" in page
    assert 'class="legend"' in page and "the attack wins" in page
    success = instructor.get("/matrix?round=2&track=digits&threat=white-box&metric=success_rate").get_data(as_text=True)
    assert re.search(cell.format(hue=40, value=r"66\.7%"), success)  # fgsm vs plain: 2 breaks of 3 clean
    for match_id in match_ids(page):
        assert instructor.get(f"/matches/{match_id}").status_code == 200


def test_api_matrix_gives_the_pages_data(instructor: FlaskClient, played: Played) -> None:
    data = instructor.get("/api/matrix?round=2&metric=success_rate").json
    assert (data["track"], data["threat"], data["metric"]) == ("digits", "white-box", "success_rate")
    assert data["boards"] == [{"track": "digits", "threat": "white-box"}]
    assert [a["plugin"] for a in data["attacks"]] == ["fgsm", "crashy"]
    assert [d["plugin"] for d in data["defenses"]] == ["madry", "plain"]
    failed, pending = data["cells"][1]
    assert (failed["status"], failed["error"], pending["status"]) == ("failed", "<b>boom</b>", "pending")
    assert pending["result_id"] is None and failed["result_id"] is not None


def test_names_errors_and_logs_from_plugins_are_escaped(instructor: FlaskClient, played: Played) -> None:
    failed_id = instructor.get("/api/matrix?round=2").json["cells"][1][0]["result_id"]
    crashy_plugin = instructor.get("/api/matrix?round=2").json["attacks"][1]["plugin_id"]
    urls = ["/", "/matrix", "/teams", "/jobs", f"/matches/{failed_id}", f"/plugins/{crashy_plugin}", "/rounds"]
    for url in urls:
        page = instructor.get(url).get_data(as_text=True)
        assert EVIL not in page and "<b>boom" not in page and "<i>out of" not in page, url
    assert ESCAPED in instructor.get("/").get_data(as_text=True)
    assert "&lt;b&gt;boom&lt;/b&gt;" in instructor.get("/matrix").get_data(as_text=True)
    assert "log " + ESCAPED in instructor.get(f"/matches/{failed_id}").get_data(as_text=True), "a team's log"
    assert "&lt;i&gt;out of memory&lt;/i&gt;" in instructor.get("/jobs").get_data(as_text=True)


# --------------------------------------------------------------------------------------------------
# A match and its gallery
# --------------------------------------------------------------------------------------------------


def test_match_page_shows_metrics_outcomes_norms_and_gallery(instructor: FlaskClient, played: Played) -> None:
    match_id = instructor.get("/api/matrix?round=2").json["cells"][0][1]["result_id"]  # fgsm vs plain
    page = instructor.get(f"/matches/{match_id}").get_data(as_text=True)
    assert "fgsm" in page and "plain" in page and "white-box" in page
    assert "Robust accuracy" in page and "25.0%" in page and "66.7%" in page  # robust, success
    assert "broken by the attack" in page and "projected onto the budget" in page
    assert "Perturbation norms" in page
    data = instructor.get(f"/api/matches/{match_id}").json
    assert data["outcomes"] == {
        "n": 4, "clean_correct": 3, "clean_rejected": 0, "adv_correct": 1, "adv_rejected": 0,
        "survived": 1, "success": 2, "violated": 0,
    }  # fmt: skip
    assert data["norms"]["l2"] == {"mean": 0.5, "median": 0.5, "max": 0.5} and data["norms"]["linf"]["max"] == 0.25
    assert len(data["gallery"]) == 4
    first = data["gallery"][0]
    assert (first["label"], first["clean_pred"], first["adv_pred"], first["success"]) == (0, 1, 1, False)
    assert [g["success"] for g in data["gallery"]] == [False, True, True, False]
    for url in first["images"].values():
        assert url in page


def test_gallery_images_are_pngs_and_the_perturbation_is_amplified(instructor: FlaskClient, played: Played) -> None:
    match_id = instructor.get("/api/matrix?round=2").json["cells"][0][1]["result_id"]
    data = instructor.get(f"/api/matches/{match_id}").json
    broken = data["gallery"][1]  # sample 1 was broken: one pixel brightened by 50
    images = {}
    for kind, url in broken["images"].items():
        response = instructor.get(url)
        assert response.status_code == 200 and response.mimetype == "image/png"
        images[kind] = Image.open(io.BytesIO(response.data))
    clean, adversarial, perturbation = images["clean"], images["adversarial"], images["perturbation"].convert("RGB")
    assert clean.size == adversarial.size == perturbation.size == (112, 112)  # 8x8 drawn 14 times larger
    assert data["amplification"] == pytest.approx(255 / 50)
    x, y = 3 * 14 + 7, 2 * 14 + 7  # the middle of pixel (row 2, column 3)
    assert adversarial.getpixel((x, y)) - clean.getpixel((x, y)) == 50
    assert perturbation.getpixel((x, y)) == (255, 0, 0)  # brightened at full contrast: red
    assert perturbation.getpixel((0, 0)) == (255, 255, 255)  # unchanged: white
    held = instructor.get(data["gallery"][0]["images"]["perturbation"])
    assert (np.asarray(Image.open(io.BytesIO(held.data)).convert("RGB")) == 255).all()  # nothing changed: white


def test_a_failed_match_shows_its_reason_and_log_tail(app: Flask, instructor: FlaskClient, played: Played) -> None:
    failed_id = failed_match(app)
    defender = app.test_client()
    sign_in(app, defender, "blue")  # the defense's team: the match is its own, the attack's log is not
    page = defender.get(f"/matches/{failed_id}").get_data(as_text=True)
    assert "Why it failed" in page and "&lt;b&gt;boom&lt;/b&gt;" in page and "Log tail" in page
    assert "shown to the plugin's team and the instructor" in page, "the defense sees the reason, not the log"
    data = defender.get(f"/api/matches/{failed_id}").json
    assert data["status"] == "failed" and data["gallery"] == [] and data["outcomes"] is None
    assert data["log_tail"] is None and data["log_hidden"]
    assert "log " + ESCAPED in instructor.get(f"/matches/{failed_id}").get_data(as_text=True)
    assert instructor.get(f"/api/matches/{failed_id}").json["log_tail"] == f"log {EVIL}"
    assert defender.get(f"/matches/{failed_id}/gallery/0/clean.png").status_code == 404


# --------------------------------------------------------------------------------------------------
# Rounds and history
# --------------------------------------------------------------------------------------------------


def test_rounds_page_lists_every_round_with_its_leaders(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get("/rounds").get_data(as_text=True)
    assert "Round 1" in page and "Round 2" in page and "published" in page
    data = instructor.get("/api/rounds").json
    assert [r["number"] for r in data["rounds"]] == [2, 1]
    (leaders,) = data["rounds"][0]["leaders"]
    assert (leaders["defense"], leaders["attack"]) == ("blue/madry", "red/fgsm")
    assert data["rounds"][0]["cells"] == {"ok": 2, "failed": 1, "pending": 1}


def test_history_shows_scores_over_rounds_who_broke_whom_and_survival(instructor: FlaskClient, rows: Rows) -> None:
    rows.track("digits", clean_floor=0.5)
    pgd, madry = rows.version("red", "pgd", "attack"), rows.version("blue", "madry", "defense")
    weak = rows.version("green", "weak", "attack")
    first = rows.round(1, status="done", published=True)
    rows.match(first, weak, madry, [1, 1, 1, 0])
    rows.match(first, pgd, madry, [1, 1, 1, 1])
    pgd2 = rows.version("red", "pgd", "attack")  # red improves its attack
    second = rows.round(2, status="done")
    rows.cell(second, weak, madry)
    rows.match(second, pgd2, madry, [0, 0, 0, 1])

    data = instructor.get("/api/rounds?track=digits&threat=white-box").json
    history = data["history"]
    assert history["rounds"] == [1, 2]
    assert {s["label"]: s["values"] for s in history["defenses"]} == {"blue/madry": [0.75, 0.0]}
    assert {s["label"]: s["values"] for s in history["attacks"]} == {"red/pgd": [0.0, 0.75], "green/weak": [0.25, 0.25]}
    (event,) = history["breaks"]
    assert (event["round"], event["attack"]["version_id"], event["defense"]["plugin"]) == (2, pgd2, "madry")
    (survival,) = history["survival"]
    assert (survival["rounds_survived"], survival["broken_in"], survival["standing"]) == (1, 2, False)
    assert [(e["round"], e["first"]) for e in history["every_break"]] == [(2, True)]
    every = instructor.get("/rounds?track=digits&threat=white-box&breaks=all").get_data(as_text=True)
    assert "every break, every round</strong>" in every and "first broke" in every
    page = instructor.get("/rounds").get_data(as_text=True)
    assert "Who broke whom" in page and "How long each defense survived" in page
    assert 'id="defense-chart"' in page and "vendor/chart.umd.min.js" in page
    embedded = re.search(r'<script id="history-data" type="application/json">(.*?)</script>', page, re.S)
    assert embedded and '"blue/madry"' in embedded.group(1)


def test_history_data_cannot_close_its_script_tag(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get("/rounds").get_data(as_text=True)
    embedded = re.search(r'<script id="history-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "crashy" in embedded and "<script>" not in embedded and "\\u003cscript\\u003e" in embedded


def test_the_vendored_chart_library_is_served(client: FlaskClient) -> None:
    response = client.get("/static/vendor/chart.umd.min.js")
    assert response.status_code == 200 and b"Chart.js v4" in response.data[:200]
    response.close()


# --------------------------------------------------------------------------------------------------
# Teams and plugins
# --------------------------------------------------------------------------------------------------


def test_teams_list_their_plugins(client: FlaskClient, played: Played) -> None:
    data = client.get("/api/teams").json
    names = [t["name"] for t in data["teams"]]
    assert names == sorted([EVIL, "blue", "red"])
    blue = next(t for t in data["teams"] if t["name"] == "blue")
    assert [p["name"] for p in blue["plugins"]] == ["madry", "plain"]
    page = client.get(f"/teams/{blue['id']}").get_data(as_text=True)
    assert "Team blue" in page and "madry" in page and "valid" in page
    shown = client.get(f"/api/teams/{blue['id']}").json["plugins"]
    assert [{k: v for k, v in p.items() if k != "standing"} for p in shown] == blue["plugins"]


def test_plugin_page_shows_versions_commits_hashes_and_results(instructor: FlaskClient, played: Played) -> None:
    fgsm = instructor.get("/api/matrix?round=2").json["attacks"][0]["plugin_id"]
    data = instructor.get(f"/api/plugins/{fgsm}").json
    (version,) = data["versions"]
    assert version["commit"] == "0123456789abcdef" and len(version["content_hash"]) == 64
    assert version["rounds"] == [1, 2] and version["valid"] and not data["never_validated"]
    assert sorted((r["threat"], r["opponent"]["plugin"]) for r in version["results"]) == [
        ("gray-box", "madry"), ("white-box", "madry"), ("white-box", "plain"),
    ]  # fmt: skip
    page = instructor.get(f"/plugins/{fgsm}").get_data(as_text=True)
    assert version["content_hash"] in page and "0123456789abcdef" in page and "Results" in page


def test_a_plugin_that_never_validated_shows_its_errors_plainly(client: FlaskClient, rows: Rows) -> None:
    rows.version("students", "broken", "attack", valid=False, errors="SyntaxError: invalid syntax (broken.py, line 3)")
    second = rows.version("students", "broken", "attack", valid=False, errors=f"manifest: bad name {EVIL}\nline two")
    plugin_id = client.get("/api/teams").json["teams"][0]["plugins"][0]["id"]
    page = client.get(f"/plugins/{plugin_id}").get_data(as_text=True)
    assert "never passed validation" in page and "SyntaxError: invalid syntax (broken.py, line 3)" in page
    assert f"manifest: bad name {ESCAPED}\nline two" in page and EVIL not in page
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert data["never_validated"] and data["versions"][0]["id"] == second
    assert data["versions"][0]["errors"] == [f"manifest: bad name {EVIL}", "line two"]
    assert "never passed validation" in client.get("/teams").get_data(as_text=True)


def test_a_defenses_failed_training_is_shown_on_its_page(instructor: FlaskClient, played: Played) -> None:
    plain = instructor.get("/api/matrix?round=2").json["defenses"][1]["plugin_id"]
    (version,) = instructor.get(f"/api/plugins/{plain}").json["versions"]
    (failure,) = version["training_failures"]
    assert (failure["kind"], failure["error"]) == ("train-defense", "<i>out of memory</i>")
    assert "Training failed" in instructor.get(f"/plugins/{plain}").get_data(as_text=True)


DEFERRED = (
    "daily limit reached: team cyan may have 3 versions evaluated per 24 hours; "
    "this one is evaluated by the first sync after 2025-01-03 09:30 UTC"
)
ARENA_FAULT = "the arena could not evaluate this version (not counted; tried again next sync): bwrap: no permission"
SMOKE_OK = {
    "declared": {"norms": ["linf", "l2"], "threats": ["white-box"], "targeted": False, "randomized": False},
    "smoke": {
        "against": "arena/undefended", "threat": "white-box", "norm": "linf", "eps": 0.2, "samples": 16,
        "status": "ok", "seconds": 1.5,
        "metrics": {"clean_accuracy": 0.9375, "robust_accuracy": 0.125, "success_rate": 0.8667, "violations": 0,
                    "queries": None},
    },
}  # fmt: skip
SMOKE_FAILED = {
    "declared": {"randomized": False},
    "smoke": {
        "against": "arena/fgsm", "threat": "white-box", "norm": "linf", "eps": 0.2, "samples": 16,
        "status": "failed", "seconds": 0.4, "error": "against arena/fgsm (white-box): ZeroDivisionError",
    },
}  # fmt: skip


def plugin_ids(client: FlaskClient) -> dict[str, int]:
    """Every plugin's id by ``team/plugin``."""
    return {f"{t['name']}/{p['name']}": p["id"] for t in client.get("/api/teams").json["teams"] for p in t["plugins"]}


def text(client: FlaskClient, url: str) -> str:
    """A page with its whitespace collapsed and its apostrophes as written, as a reader sees it."""
    return " ".join(client.get(url).get_data(as_text=True).replace("&#39;", "'").split())


@pytest.mark.parametrize(
    ("status", "errors", "flag", "explained"),
    [
        ("pending", None, "pending", "recorded, not validated yet: the next sync validates it"),
        ("deferred", DEFERRED, "deferred", "over the team's daily validation limit: not validated yet"),
        ("error", ARENA_FAULT, "arena error", "the arena could not validate it (the arena's fault, not the plugin's"),
    ],
)
def test_a_version_waiting_for_validation_says_why_and_is_not_called_invalid(
    client: FlaskClient, rows: BoardRows, status: str, errors: str | None, flag: str, explained: str
) -> None:
    rows.version("cyan", "waiting", "attack", status=status, errors=errors, checks={"folder": []})
    plugin_id = plugin_ids(client)["cyan/waiting"]
    page = text(client, f"/plugins/{plugin_id}")
    assert f'<span class="flag flag-{status}">{flag}</span>' in page and explained in page
    assert "invalid" not in page and "never passed validation" not in page and "Validation errors" not in page
    assert "has been validated yet, so it plays in no round yet: 1 version waits for validation." in page
    assert (
        'validation ran</th><td><span class="muted">not yet' in page
        and "reading the folder</th><td> found no problem" in page
    )
    if errors:
        assert f'<span class="note">{errors}</span>' in page  # the arena's own reason, with the limit and the time
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert (data["never_validated"], data["waiting"], data["failed"]) == (True, 1, 0)
    (version,) = data["versions"]
    assert (version["status"], version["errors"], version["note"]) == (status, [], [errors] if errors else [])
    assert (
        version["evaluated_at"] is None and version["checks"] == {"folder": []} and explained in version["explanation"]
    )
    team = text(client, "/teams")
    assert f'<span class="flag flag-{status}">{flag}</span>' in team and explained in team
    assert "no version has passed validation yet" in team and "never passed validation" not in team


def test_a_valid_version_shows_its_smoke_match_readably_with_every_field(
    instructor: FlaskClient, rows: BoardRows
) -> None:
    client = instructor
    checks = SMOKE_OK | {"smoke": SMOKE_OK["smoke"] | {"draws": 2}, "imports": ["torch"]}
    rows.version("cyan", "pgd", "attack", checks=checks, log_tail="step 1\nstep 2")
    plugin_id = plugin_ids(client)["cyan/pgd"]
    page = text(client, f"/plugins/{plugin_id}")
    assert (
        '<span class="flag flag-valid">valid</span>' in page
        and "validation ran</th><td>2025-01-02 09:30:00 UTC" in page
    )
    assert "norms: linf, l2 · randomized: False · targeted: False · threats: white-box" in page
    assert (
        '<span class="flag flag-valid">ok</span> against <code>arena/undefended</code> · white-box · linf eps 0.2 · '
        "16 samples · 1.5 s <br>clean accuracy 93.8% · robust accuracy 12.5% · attack success 86.7% · "
        "violations 0 · queries –"
    ) in page
    assert "draws: <code>2</code>" in page and 'imports</th><td><code>["torch"]</code>' in page  # kept as recorded
    assert "{&#39;" not in page and "never" not in page  # no dict dumped raw; no notice
    assert (
        '<summary>Validation log tail (what the plugin printed)</summary><pre class="log">step 1 step 2</pre>' in page
    )
    (version,) = client.get(f"/api/plugins/{plugin_id}").json["versions"]
    assert version["checks"] == checks and version["log_tail"] == "step 1\nstep 2"
    assert (version["status"], version["evaluated_at"], version["explanation"]) == (
        "valid",
        VALIDATED.isoformat(),
        None,
    )
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert line["latest"]["status"] == "valid" and line["latest"]["evaluated_at"] == VALIDATED.isoformat()


def test_a_failed_validation_shows_the_failed_smoke_match_and_its_errors(
    instructor: FlaskClient, rows: BoardRows
) -> None:
    client = instructor
    error = "smoke match: against arena/fgsm (white-box): ZeroDivisionError"
    rows.version("cyan", "shaky", "defense", status="invalid", errors=error, checks=SMOKE_FAILED, log_tail="Trace")
    rows.version("cyan", "shaky", "defense", status="deferred", errors=DEFERRED)
    plugin_id = plugin_ids(client)["cyan/shaky"]
    page = text(client, f"/plugins/{plugin_id}")
    assert '<span class="flag flag-invalid">invalid</span>' in page and "Validation errors" in page and error in page
    assert '<span class="flag flag-invalid">failed</span> against <code>arena/fgsm</code>' in page
    assert "ZeroDivisionError</pre>" in page and "randomized: False" in page
    assert "1 version waits for validation, and 1 failed it." in page
    data = client.get(f"/api/plugins/{plugin_id}").json
    assert (data["never_validated"], data["waiting"], data["failed"]) == (True, 1, 1)
    deferred, invalid = data["versions"]
    assert (deferred["status"], deferred["note"], invalid["errors"]) == ("deferred", [DEFERRED], [error])
    assert invalid["checks"] == SMOKE_FAILED and invalid["log_tail"] == "Trace"
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert (line["valid_versions"], line["latest"]["status"], line["latest"]["note"]) == (0, "deferred", [DEFERRED])


def test_the_team_page_shows_the_newest_versions_status_beside_an_older_valid_one(
    client: FlaskClient, rows: BoardRows
) -> None:
    rows.version("cyan", "pgd", "attack", checks=SMOKE_OK)
    rows.version("cyan", "pgd", "attack", status="error", errors=ARENA_FAULT)
    rows.version("cyan", "fgsm", "attack", status="invalid", errors="SyntaxError")
    team_id = client.get("/api/teams").json["teams"][0]["id"]
    page = text(client, f"/teams/{team_id}")
    assert '<span class="flag flag-error">arena error</span>' in page and ARENA_FAULT in page
    assert "an older valid version stays in the game" in page
    assert '<span class="flag flag-invalid">invalid</span>' in page and "never passed validation" in page
    fgsm, pgd = client.get(f"/api/teams/{team_id}").json["plugins"]
    assert (pgd["valid_versions"], pgd["latest"]["status"], pgd["latest"]["errors"]) == (1, "error", [])
    assert (fgsm["latest"]["status"], fgsm["latest"]["errors"], fgsm["latest"]["note"]) == (
        "invalid",
        ["SyntaxError"],
        [],
    )


def test_a_withdrawn_plugin_says_so(client: FlaskClient, rows: BoardRows) -> None:
    version = rows.version("cyan", "gone", "defense", checks=SMOKE_OK)
    rows.withdraw(version, datetime(2025, 1, 5, 8, 0, tzinfo=UTC))
    plugin_id = plugin_ids(client)["cyan/gone"]
    said = (
        'withdrawn</span> <span class="explanation">'
        "its folder left the team's repository (seen by the sync of 2025-01-05 08:00:00 UTC)"
    )
    for url in (f"/plugins/{plugin_id}", "/teams"):
        page = text(client, url)
        assert said in page and "stays in the game" not in page, url
    assert client.get(f"/api/plugins/{plugin_id}").json["plugin"]["withdrawn_at"] == "2025-01-05T08:00:00+00:00"
    (line,) = client.get("/api/teams").json["teams"][0]["plugins"]
    assert line["withdrawn_at"] == "2025-01-05T08:00:00+00:00"


def test_a_hostile_log_tail_and_checks_are_escaped(instructor: FlaskClient, rows: BoardRows) -> None:
    client = instructor
    hostile = {
        "declared": {"norms": [EVIL], "threats": ["white-box"]},
        "folder": [f"plugin.toml: {EVIL}"],
        "smoke": SMOKE_FAILED["smoke"] | {"error": f"died {EVIL}", "against": EVIL, "extra": EVIL},
        EVIL: EVIL,
    }
    rows.version("cyan", "evil", "attack", status="invalid", errors=EVIL, checks=hostile, log_tail=f"</pre>{EVIL}")
    rows.version("cyan", "evil", "attack", status="deferred", errors=f"limit {EVIL}")
    plugin_id = plugin_ids(client)["cyan/evil"]
    for url in (f"/plugins/{plugin_id}", "/teams"):
        page = client.get(url).get_data(as_text=True)
        assert "<script" not in page and "</pre><script" not in page, url
    page = client.get(f"/plugins/{plugin_id}").get_data(as_text=True)
    assert f'<pre class="log">&lt;/pre&gt;{ESCAPED}</pre>' in page
    assert f"norms: {ESCAPED}" in page and f"died {ESCAPED}" in page and f"limit {ESCAPED}" in page
    assert "\\u003cscript\\u003e" in page  # unknown fields, as JSON that cannot close a tag
    assert f"limit {ESCAPED}" in client.get("/teams").get_data(as_text=True)
    (_, invalid) = client.get(f"/api/plugins/{plugin_id}").json["versions"]
    assert invalid["log_tail"] == f"</pre>{EVIL}" and invalid["checks"] == hostile


# --------------------------------------------------------------------------------------------------
# Jobs and rules
# --------------------------------------------------------------------------------------------------


def test_jobs_page_counts_lists_and_refreshes_while_the_round_runs(client: FlaskClient, played: Played) -> None:
    page = client.get("/jobs").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="5">' in page and "reloads every 5 seconds" in page
    data = client.get("/api/jobs").json
    assert data["totals"] == {"queued": 1, "running": 0, "done": 1, "failed": 1}
    assert [c["kind"] for c in data["counts"]] == ["train-defense", "match"]
    (failed,) = data["jobs"]["failed"]
    assert (failed["attempts"], failed["worker"], failed["defense"]["plugin"]) == (2, "gpu-1", "plain")
    assert data["jobs"]["queued"][0]["attack"]["plugin"] == "crashy"
    finished = client.get("/jobs?round=1").get_data(as_text=True)
    assert "http-equiv" not in finished and "needed no new jobs" in finished


def test_rules_come_from_the_tracks_configuration(client: FlaskClient, played: Played, app: Flask) -> None:
    home = Path(app.config["ARENA_HOME"])
    home.mkdir(parents=True)
    (home / "tracks.toml").write_text('[tracks.tiny]\nbase = "digits"\neval_size = 40\n')
    data = client.get("/api/rules").json
    tracks = {t["name"]: t for t in data["tracks"]}
    assert set(tracks) == {*TRACKS, "tiny"}
    assert tracks["digits"]["played"] and not tracks["tiny"]["played"]
    assert {f["name"]: f["value"] for f in tracks["digits"]["fields"]}["clean_floor"] == 0.8  # as played
    assert {f["name"]: f["value"] for f in tracks["tiny"]["fields"]}["eval_size"] == 40
    assert [t["name"] for t in data["threats"]] == list(THREATS) and all(t["description"] for t in data["threats"])
    page = client.get("/rules").get_data(as_text=True)
    assert "clean-accuracy floor" in page and "worst-case robust accuracy" in page and "50.0%" in page
    (home / "tracks.toml").write_text("[tracks.bad]\nbase = 3\n")
    assert "could not be read" in client.get("/rules").get_data(as_text=True)


def test_rules_say_what_the_evaluation_data_are_and_hide_a_private_sets_path(
    client: FlaskClient, played: Played, app: Flask
) -> None:
    home = Path(app.config["ARENA_HOME"])
    home.mkdir(parents=True)
    (home / "tracks.toml").write_text(
        '[tracks.exam]\nbase = "digits"\nevaluation = "private"\neval_path = "/srv/instructor/exam.npz"\n'
    )
    tracks = {t["name"]: t for t in client.get("/api/rules").json["tracks"]}
    exam = {f["name"]: f["value"] for f in tracks["exam"]["fields"]}
    assert exam["evaluation"] == "the instructor's private set" and "eval_path" not in exam
    assert exam["levels"] == 17 and exam["max_artifact_mb"] == 16.0
    page = client.get("/rules").get_data(as_text=True)
    assert "/srv/instructor" not in page and "secret distortion of the held-out split" in page
    assert "pixel grid" in page and "1.0 MiB" in page


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


# --------------------------------------------------------------------------------------------------
# Budget violations and forfeits wherever a score is shown (issue 12)
# --------------------------------------------------------------------------------------------------


def test_an_attack_that_ignores_its_budget_is_flagged_on_the_rankings_and_the_heatmap(
    client: FlaskClient, rows: BoardRows
) -> None:
    rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
    sloppy = rows.version("red", "sloppy", "attack")
    careful = rows.version("green", "careful", "attack")
    plain = rows.version("blue", "plain", "defense")
    round_id = rows.round(1, status="done", published=True)
    rows.match(round_id, sloppy, plain, [0, 0, 0, 1], metrics={"violations": 3})
    rows.match(round_id, careful, plain, [0, 1, 1, 1])
    (board,) = client.get("/api/leaderboard").json["boards"]
    violations = {a["entry"]["plugin"]: a["violations"] for a in board["attacks"]}
    assert violations == {"sloppy": 3, "careful": 0}
    overview = client.get("/").get_data(as_text=True)
    assert overview.count("projected</span>") == 1 and "⚠ 3 projected" in overview
    matrix = client.get("/matrix").get_data(as_text=True)
    assert matrix.count("flag-violations") == 1 and "projected 3 sample(s)" in matrix


def test_a_defense_that_fails_loses_its_matches_on_the_board(client: FlaskClient, rows: BoardRows) -> None:
    rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
    attack = rows.version("red", "pgd", "attack")
    other = rows.version("red", "simba", "attack")
    crashy = rows.version("blue", "crashy", "defense")
    round_id = rows.round(1, status="done", published=True)
    rows.match(round_id, attack, crashy, status="failed", error="the defense failed", metrics={"blame": "defense"})
    rows.match(round_id, other, crashy, [1, 1, 1, 1])
    (board,) = client.get("/api/leaderboard").json["boards"]
    (defense,) = board["defenses"]
    assert defense["worst_case_robust_accuracy"] == 0.0 and defense["forfeited"] == 1
    assert {a["entry"]["plugin"]: a["failed"] for a in board["attacks"]} == {"pgd": 0, "simba": 0}
    assert "defense failed" in client.get("/matrix").get_data(as_text=True)
    assert "(1 its own)" in client.get("/").get_data(as_text=True)


def test_match_and_defense_pages_draw_robustness_curves(client: FlaskClient, rows: BoardRows) -> None:
    rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
    attack = rows.version("red", "cw", "attack")
    defense = rows.version("blue", "plain", "defense")
    round_id = rows.round(1, status="done", published=True)
    rows.match(round_id, attack, defense, [1, 0, 0, 1], metrics={"norm": "linf", "eps": 0.2})
    (match_id,) = match_ids(client.get("/matrix").get_data(as_text=True))
    curve = client.get(f"/api/matches/{match_id}").json["curve"]
    assert len(curve) == 11 and curve[0]["robust_accuracy"] == 1.0 and curve[-1]["robust_accuracy"] == 0.5
    page = client.get(f"/matches/{match_id}").get_data(as_text=True)
    assert "<polyline" in page and "Robustness curve" in page and "only a step at eps" in page
    with rows.db.session() as s:
        plugin_id = s.get(PluginVersion, defense).plugin_id
    (version,) = client.get(f"/api/plugins/{plugin_id}").json["versions"]
    (board,) = version["curves"]
    assert board["track"] == "digits" and board["attacks"] == 1 and board["curve"] == curve
    assert "<polyline" in client.get(f"/plugins/{plugin_id}").get_data(as_text=True)


def test_diagnostics_flag_a_defense_and_link_to_their_explanation(client: FlaskClient, rows: BoardRows) -> None:
    rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
    fgsm, pgd = rows.version("arena", "fgsm", "attack"), rows.version("arena", "pgd", "attack")
    simba = rows.version("arena", "simba", "attack")
    baseline, masked = rows.version("arena", "undefended", "defense"), rows.version("blue", "masked", "defense")
    round_id = rows.round(1, status="done", published=True)
    for attack, survived, gradient in ((fgsm, [0, 0, 1, 1], 1e-6), (pgd, [1, 1, 1, 0], 1e-6)):
        rows.match(round_id, attack, masked, survived, metrics={"input_gradient": gradient, "clean_disagreement": 0.5})
        rows.match(round_id, attack, baseline, [0, 0, 0, 0], metrics={"input_gradient": 0.3})
    cw = rows.version("arena", "cw-l2", "attack")
    rows.match(round_id, cw, masked, [1, 1, 1, 1])
    rows.match(round_id, cw, baseline, [0, 0, 0, 0])
    rows.match(round_id, simba, masked, [0, 0, 0, 1], threat="black-box")
    rows.match(round_id, simba, baseline, [0, 0, 0, 0], threat="black-box")
    boards = client.get("/api/leaderboard").json["boards"]
    flags = {
        (b["threat"], d["entry"]["plugin"]): sorted(g["name"] for g in d["diagnostics"])
        for b in boards
        for d in b["defenses"]
    }
    expected = [
        "black-box-beats-white-box",
        "minimal-attacks-fail",
        "single-step-beats-iterative",
        "unstable-draws",
        "vanishing-gradients",
    ]
    assert flags["white-box", "masked"] == flags["black-box", "masked"] == expected
    assert flags["white-box", "undefended"] == []
    page = client.get("/").get_data(as_text=True)
    assert 'href="/rules#vanishing-gradients"' in page and "3.3e-06 of the undefended baseline" in page
    rules = client.get("/rules").get_data(as_text=True)
    assert 'id="vanishing-gradients"' in rules and 'id="unstable-draws"' in rules


# --------------------------------------------------------------------------------------------------
# Team-private logs: a team's token shows its own plugins' logs, the instructor's every team's, the public none
# --------------------------------------------------------------------------------------------------


def failed_match(app: Flask) -> int:
    """The id of the played round's failed match (crashy against madry, round 2)."""
    with app.extensions["arena_db"].session() as session:
        return session.scalar(select(Result.id).where(Result.status == "failed"))


def plugin_id(client: FlaskClient, name: str) -> int:
    teams = client.get("/api/teams").json["teams"]
    return next(p["id"] for t in teams for p in t["plugins"] if p["name"] == name)


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
        '  File "/srv/arena/src/arena/match.py", line 20, in play'
    )
    shown = access.relative_paths(log)
    assert "/srv" not in shown and "/opt" not in shown and "/usr" not in shown
    assert '"attack.py", line 3' in shown and '"torch/nn/modules/module.py"' in shown
    assert '"multiprocessing/connection.py"' in shown and '"arena/match.py"' in shown


# --------------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------------


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_round_exports_its_rankings_matrix_and_samples_as_csv(instructor: FlaskClient, played: Played) -> None:
    rankings = instructor.get("/export/rankings.csv?round=2")
    assert (
        rankings.mimetype == "text/csv" and 'filename="round-2-rankings.csv"' in rankings.headers["Content-Disposition"]
    )
    ranked = csv_rows(rankings.get_data(as_text=True))
    defenses = [(r["plugin"], r["rank"], r["score"]) for r in ranked if r["kind"] == "defense"]
    assert defenses == [("madry", "1", "0.5"), ("plain", "2", "0.25")]
    assert {r["plugin"] for r in ranked if r["kind"] == "attack"} == {"fgsm", "crashy"}
    matrix = csv_rows(instructor.get("/export/matrix.csv?round=2&track=digits&threat=white-box").get_data(as_text=True))
    failed = next(r for r in matrix if r["status"] == "failed")
    assert failed["attack"] == "crashy" and failed["error"] == "<b>boom</b>" and "log" not in failed
    samples = csv_rows(instructor.get("/export/samples.csv?round=2").get_data(as_text=True))
    assert len(samples) == 2 * 4 and {s["defense"] for s in samples} == {"madry", "plain"}
    assert sum(s["survived"] == "True" for s in samples if s["defense"] == "madry") == 2
    assert instructor.get("/export/secrets.csv").status_code == 404
    assert "round-2-samples.csv" not in instructor.get("/?round=2").get_data(as_text=True)
    assert "/export/samples.csv?round=2" in instructor.get("/?round=2").get_data(as_text=True).replace("&amp;", "&")


def test_arena_export_writes_the_same_tables(
    app: Flask, played: Played, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARENA_DATABASE_URL", app.config["DATABASE_URL"])
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    done = CliRunner().invoke(main, ["export", "--round", "2", "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    written = (tmp_path / "out" / "round-2-rankings.csv").read_text()
    instructor = app.test_client()
    sign_in(app, instructor)  # round 2 is not published: its tables are the instructor's
    assert written == instructor.get("/export/rankings.csv?round=2").get_data(as_text=True)
    assert "round-2-samples.csv: 8 rows" in done.output
    assert CliRunner().invoke(main, ["export", "--round", "9"]).exit_code == 1


# --------------------------------------------------------------------------------------------------
# The game
# --------------------------------------------------------------------------------------------------


def test_the_game_page_shows_the_value_mixes_and_best_responses(instructor: FlaskClient, played: Played) -> None:
    """Round 2, white-box: fgsm breaks half of madry and two thirds of plain; crashy failed, one cell pending."""
    data = instructor.get("/api/game?round=2&track=digits&threat=white-box").json
    game = data["game"]
    assert game["value"] == pytest.approx(0.5) and not game["complete"]
    weights = {a["label"]: a["weight"] for a in game["attacks"]}
    assert weights["red/fgsm"] == pytest.approx(1.0) and weights[next(k for k in weights if "crashy" in k)] == 0.0
    defenses = {d["label"]: d for d in game["defenses"]}
    assert defenses["blue/madry"]["weight"] == pytest.approx(1.0)
    assert defenses["blue/plain"]["best_response"] == "red/fgsm"
    assert [v["round"] for v in data["values"]] == [2]  # round 1 played gray-box only
    page = instructor.get("/game?round=2&track=digits&threat=white-box").get_data(as_text=True)
    assert "Value of the game" in page and "50.0%" in page and "still pending" in page
    assert instructor.get("/game?round=2&track=mnist&threat=white-box").status_code == 404


def test_the_jobs_page_of_an_open_round_says_when_its_jobs_come(client: FlaskClient, rows: BoardRows) -> None:
    """Before it closes a round has no jobs: the page says when they come, and does not reload for days."""
    round_id = rows.round(1, status="open")
    with rows.db.session() as session:
        session.get(Round, round_id).closes_at = datetime(2026, 12, 9, 17, 0, tzinfo=UTC)
    page = client.get("/jobs").get_data(as_text=True)
    assert "Round 1 is open" in page and "2026-12-09 17:00 UTC" in page and "needed no new jobs" not in page
    data = client.get("/api/jobs").json
    assert data["refresh"] is None and data["round"]["closes_at"].startswith("2026-12-09T17:00")


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


# --------------------------------------------------------------------------------------------------
# A student's own standing
# --------------------------------------------------------------------------------------------------


def test_plugin_and_team_pages_show_rank_score_and_change_since_the_round_before(
    client: FlaskClient, rows: BoardRows
) -> None:
    rows.track("digits", clean_floor=0.5)
    pgd, madry, plain = (
        rows.version("red", "pgd", "attack"),
        rows.version("blue", "madry", "defense"),
        rows.version("blue", "plain", "defense"),
    )
    first = rows.round(1, status="done", published=True)
    rows.match(first, pgd, madry, [1, 1, 1, 0])  # madry 0.75: first
    rows.match(first, pgd, plain, [0, 0, 1, 1])  # plain 0.5
    pgd2 = rows.version("red", "pgd", "attack")  # red improves its attack
    second = rows.round(2, status="done", published=True)
    rows.match(second, pgd2, madry, [0, 0, 0, 1])  # madry falls to 0.25
    rows.match(second, pgd2, plain, [1, 1, 0, 1])  # plain holds 0.75: first now
    rows.round(3)  # running, unpublished: not counted for the public
    teams = {t["name"]: t for t in client.get("/api/teams").json["teams"]}
    ids = {p["name"]: p["id"] for t in teams.values() for p in t["plugins"]}

    (line,) = client.get(f"/api/plugins/{ids['madry']}").json["standing"]
    assert (line["track"], line["threat"], line["round"], line["rank"], line["of"]) == ("digits", "white-box", 2, 2, 2)
    assert line["score"] == pytest.approx(0.25) and line["change"]["score"] == pytest.approx(-0.5)
    assert line["change"]["rank"] == -1 and (line["previous"]["round"], line["previous"]["rank"]) == (1, 1)
    assert line["clean_accuracy"] == 1.0 and line["mean_robust_accuracy"] == pytest.approx(0.25)
    assert [(w["attack"], w["robust_accuracy"]) for w in line["weakest"]] == [("red/pgd", 0.25)]
    (attack,) = client.get(f"/api/plugins/{ids['pgd']}").json["standing"]  # across its versions
    assert (attack["rank"], attack["of"], attack["round"]) == (1, 1, 2)
    assert attack["score"] == pytest.approx(0.5) and attack["change"]["score"] == pytest.approx(0.125)
    page = client.get(f"/plugins/{ids['madry']}").get_data(as_text=True)
    assert "Standing" in page and "2 of 2" in page and "-50.0 points" in page and "down 1" in page

    blue = client.get(f"/api/teams/{teams['blue']['id']}").json
    standing = {p["name"]: p["standing"][0] for p in blue["plugins"]}
    assert (standing["plain"]["rank"], standing["plain"]["change"]["rank"]) == (1, 1)
    team_page = client.get(f"/teams/{teams['blue']['id']}").get_data(as_text=True)
    assert "Standing of its defenses" in team_page and "up 1" in team_page and "+25.0 points" in team_page


def test_a_defense_page_sets_its_threat_models_side_by_side(instructor: FlaskClient, played: Played) -> None:
    page = instructor.get(f"/plugins/{plugin_id(instructor, 'madry')}").get_data(as_text=True)
    table = page[page.index('<table class="side-by-side">') : page.index("</table>", page.index("side-by-side"))]
    assert re.findall(r"<th>([a-z-]+)</th>", table) == ["white-box", "gray-box", "black-box"]
    row = re.search(r"<td>digits</td>(.*?)</tr>", table, re.S).group(1)
    cells = [" ".join(re.sub(r"<.*?>", "", c).split()) for c in re.findall(r'<td class="num">(.*?)</td>', row, re.S)]
    assert cells == ["50.0% (1 of 2)", "75.0% (1 of 1)", "–"]  # round 2 white-box, round 1 gray-box, no black-box


def test_a_standing_counts_only_rounds_the_viewer_sees_scored(
    client: FlaskClient, instructor: FlaskClient, played: Played
) -> None:
    madry = plugin_id(client, "madry")
    public = client.get(f"/api/plugins/{madry}").json["standing"]
    assert [(s["threat"], s["round"], s["score"]) for s in public] == [("gray-box", 1, 0.75)]
    everything = instructor.get(f"/api/plugins/{madry}").json["standing"]
    assert [(s["threat"], s["round"]) for s in everything] == [("gray-box", 1), ("white-box", 2)]


def test_the_class_status_page_gives_each_teams_sync_versions_and_last_failure(
    client: FlaskClient, instructor: FlaskClient, played: Played, rows: BoardRows
) -> None:
    rows.version("green", "broken", "attack", valid=False, errors="manifest: no name\nline two")
    public = {t["name"]: t for t in client.get("/api/status").json["teams"]}
    assert set(public) == {"red", "blue", "green", EVIL}
    assert (public["blue"]["plugins"], public["blue"]["valid"], public["blue"]["invalid"]) == (2, 2, 0)
    assert public["blue"]["last_push"] and public["blue"]["synced_at"] is None  # no repository: never synced
    training = public["blue"]["last_failure"]
    assert (training["kind"], training["plugin"], training["reason"]) == ("training", "plain", "<i>out of memory</i>")
    validation = public["green"]["last_failure"]
    assert (validation["kind"], validation["reason"], public["green"]["invalid"]) == (
        "validation",
        "manifest: no name",
        1,
    )
    assert public[EVIL]["last_failure"] is None  # its failed match is in round 2, not published
    assert public["red"]["last_failure"] is None
    everything = {t["name"]: t for t in instructor.get("/api/status").json["teams"]}
    match = everything[EVIL]["last_failure"]
    assert (match["kind"], match["plugin"], match["reason"]) == ("match", "crashy", "<b>boom</b>")
    page = instructor.get("/status").get_data(as_text=True)
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and EVIL not in page and "log " not in page
    assert "Class status" in client.get("/status").get_data(as_text=True)
    by_invalid = [t["name"] for t in client.get("/api/status?sort=-invalid").json["teams"]]
    assert by_invalid[0] == "green" and sorted(by_invalid) == sorted(public)
    assert [t["name"] for t in client.get("/api/status?sort=-name").json["teams"]] == sorted(public, reverse=True)
    page = client.get("/status?sort=-invalid").get_data(as_text=True)
    assert "Invalid ▼" in page and 'href="/status?sort=invalid"' in page and 'href="/status?sort=-valid"' in page
    assert client.get("/status?sort=secret").status_code == 400


def test_a_disputed_match_shows_on_both_rows_and_in_the_class_status(
    instructor: FlaskClient, played: Played, rows: BoardRows
) -> None:
    ids = {"attack_version_id": played.crashy, "defense_version_id": played.plain, "track": "digits"}
    rows.result(
        played.pending, status="failed", error="disputed: x", metrics={"blame": "disputed"}, threat="white-box", **ids
    )
    page = instructor.get("/?round=2").get_data(as_text=True)
    assert page.count("1 disputed") == 2, "the defense's row and the attack's"
    status = {t["name"]: t for t in instructor.get("/api/status").json["teams"]}
    assert status["blue"]["disputed"] == 1 and status[EVIL]["disputed"] == 0
    assert status[EVIL]["last_failure"]["reason"] == "<b>boom</b>", "a disputed match is no team's failure"
    assert "Disputed" in instructor.get("/status").get_data(as_text=True)


def test_history_charts_draw_the_best_and_the_viewers_team_with_every_figure_in_a_table(
    app: Flask, rows: BoardRows
) -> None:
    attack = rows.version("red", "pgd", "attack")
    defenses = [rows.version(f"team-{i:02d}", "shield", "defense") for i in range(10)]
    first = rows.round(1, status="done", published=True)
    for i, defense in enumerate(defenses):  # team-00 holds best, team-09 worst
        rows.match(first, attack, defense, [1] * (10 - i) + [0] * i)
    viewer = app.test_client()
    sign_in(app, viewer, "team-09")
    page = viewer.get("/rounds").get_data(as_text=True)
    assert "the 8 best by the last round, and team-09's" in page
    table = page[page.index('<table class="series">') : page.index("</table>", page.index('<table class="series">'))]
    assert table.count("<tr") == 11 and table.count('class="own"') == 1  # a head and every defense
    view = re.search(r'<script id="history-view" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert '"own_team": "team-09"' in view and '"top": 8' in view
    public = app.test_client().get("/rounds").get_data(as_text=True)
    assert "the 8 best by the last round;" in public and 'class="own"' not in public


def test_rankings_filter_and_sort_on_the_server_without_javascript(client: FlaskClient, rows: BoardRows) -> None:
    rows.track("digits", clean_floor=0.5)
    attack = rows.version("red", "pgd", "attack")
    strong, weak = rows.version("blue", "strong", "defense"), rows.version("gold", "weak", "defense")
    first = rows.round(1, status="done", published=True)
    rows.match(first, attack, strong, [1, 1, 1, 0], clean=[1, 1, 1, 0])  # worst 0.75, clean 0.75
    rows.match(first, attack, weak, [1, 0, 0, 0])  # worst 0.25, clean 1.0

    def defenses(url: str) -> list[tuple[str, int]]:
        (board,) = client.get(url).json["boards"]
        return [(d["entry"]["plugin"], d["rank"]) for d in board["defenses"]]

    assert defenses("/api/leaderboard") == [("strong", 1), ("weak", 2)]
    assert defenses("/api/leaderboard?dsort=-clean_accuracy") == [("weak", 2), ("strong", 1)]  # ranks stay
    assert defenses("/api/leaderboard?dsort=clean_accuracy") == [("strong", 1), ("weak", 2)]
    assert defenses("/api/leaderboard?q=GOLD") == [("weak", 2)]
    page = client.get("/?q=nobody").get_data(as_text=True)
    assert "No defense here matches “nobody”" in page and "No attack here matches" in page
    sortable = client.get("/").get_data(as_text=True).replace("&amp;", "&")
    assert 'href="/?round=1&dsort=-clean_accuracy#digits-white-box"' in sortable  # a header is a plain link
    assert '<form class="filter" method="get" action="/">' in sortable
    again = client.get("/?dsort=-clean_accuracy").get_data(as_text=True).replace("&amp;", "&")
    assert "Clean ▼" in again and 'href="/?round=1&dsort=clean_accuracy#digits-white-box"' in again
    assert client.get("/api/leaderboard?dsort=secret").status_code == 400


def test_a_kept_value_is_made_again_only_when_its_data_changed_and_no_sooner_than_the_refresh_time() -> None:
    made, state = [], ["a"]
    recent = Recent[int](ttl=3600.0)

    def make() -> int:
        made.append(1)
        return len(made)

    assert recent.get("page", make, lambda: state[0]) == 1
    state[0] = "b"
    assert recent.get("page", make, lambda: state[0]) == 1  # recent: served as it is
    recent.ttl = 0.0
    assert recent.get("page", make, lambda: state[0]) == 2  # old, and the data changed: made again
    assert recent.get("page", make, lambda: state[0]) == 2  # old, the data unchanged: kept
    assert len(made) == 2


def test_the_games_value_over_the_rounds_is_drawn_without_javascript(client: FlaskClient, rows: BoardRows) -> None:
    rows.track("digits", clean_floor=0.5)
    pgd, madry = rows.version("red", "pgd", "attack"), rows.version("blue", "madry", "defense")
    for number, survived in ((1, [1, 1, 0, 0]), (2, [1, 1, 1, 0])):
        round_id = rows.round(number, status="done", published=True)
        pgd_now = pgd if number == 1 else rows.version("red", "pgd", "attack")
        rows.match(round_id, pgd_now, madry, survived)
    data = client.get("/api/game").json
    assert [(v["round"], v["value"]) for v in data["values"]] == [(1, 0.5), (2, 0.25)]
    page = client.get("/game").get_data(as_text=True)
    assert 'aria-label="the game\'s value per round"' in page
    assert '<polyline class="line" points="30.0,55.0 210.0,77.5 "/>' in page
