"""The web board's pages and JSON API, with Flask's test client over a real SQLite database."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from test_scoring import Rows

from arena.config import Settings
from arena.hookspecs import THREATS
from arena.scoring import round_standings
from arena.store import Database, Round
from arena.tracks import TRACKS
from leaderboard import create_app

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

#: every page, and its twin under /api/ (the API's names differ only for the overview)
PAGES = ["/", "/matrix", "/rounds", "/teams", "/jobs", "/rules"]
APIS = ["/api/", "/api/leaderboard", "/api/matrix", "/api/rounds", "/api/teams", "/api/jobs", "/api/rules"]


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
def rows(app: Flask) -> Rows:
    return Rows(app.extensions["arena_db"])


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
    assert client.get("/api/leaderboard").json == {"rounds": [], "round": None, "cells": None, "boards": []}
    assert client.get("/api/matrix").json["cells"] == []
    assert client.get("/api/rounds").json["history"] is None
    assert client.get("/api/teams").json == {"teams": []}
    assert client.get("/api/jobs").json["round"] is None
    assert [t["name"] for t in client.get("/api/rules").json["tracks"]] == sorted(TRACKS)


def test_unknown_ids_and_rounds_are_not_found(client: FlaskClient, played: Played) -> None:
    (match_id,) = match_ids(client.get("/matrix?round=1").get_data(as_text=True))
    missing = [
        "/?round=7", "/?round=abc", "/matrix?round=7", "/matrix?track=nowhere", "/rounds?track=nowhere",
        "/jobs?round=9", "/matches/999", "/matches/999/gallery/0/clean.png", "/teams/999", "/plugins/999", "/nowhere",
        f"/matches/{match_id}/gallery/99/clean.png", f"/matches/{match_id}/gallery/0/bogus.png",
    ]  # fmt: skip
    for url in missing:
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"Arena" in response.data and b"Not Found" in response.data, url  # the board's own page
    for url in ("/api/leaderboard?round=7", "/api/matches/999", "/api/plugins/999", "/api/teams/999", "/api/nowhere"):
        response = client.get(url)
        assert response.status_code == 404 and response.json["status"] == 404, url
    assert "no round 7" in client.get("/api/leaderboard?round=7").json["error"]
    assert client.get("/api/matrix?round=2&threat=black-box").status_code == 404
    assert client.get("/matrix?metric=queries").status_code == 400
    assert "metric must be one of" in client.get("/api/matrix?metric=queries").json["error"]


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


def test_overview_shows_the_latest_round_or_the_one_asked_for(client: FlaskClient, played: Played) -> None:
    page = client.get("/").get_data(as_text=True)
    assert "digits · white-box" in page and "madry" in page and "plain" in page
    assert "50.0%" in page  # madry's worst-case robust accuracy in round 2
    assert "below floor" in page  # plain: clean 0.75 < 0.8
    assert "0123456789ab"[:8] in page  # fgsm's commit
    older = client.get("/?round=1").get_data(as_text=True)
    assert "digits · gray-box" in older and "75.0%" in older and "white-box" not in older


def test_a_running_round_says_so_with_its_progress(client: FlaskClient, played: Played) -> None:
    page = client.get("/").get_data(as_text=True)
    assert "Round 2 is still running" in page and "3 of 4 matches played" in page and "(1 failed)" in page
    assert "still running" not in client.get("/?round=1").get_data(as_text=True)
    assert client.get("/api/leaderboard").json["cells"] == {"ok": 2, "failed": 1, "pending": 1}


def test_randomized_defenses_are_flagged_with_their_draws(client: FlaskClient, rows: Rows) -> None:
    attack, magnet = rows.version("red", "pgd", "attack"), rows.version("blue", "magnet", "defense")
    rows.match(rows.round(1), attack, magnet, [1, 0], metrics={"draws": 5})
    assert "5 draws" in client.get("/").get_data(as_text=True)
    assert client.get("/api/leaderboard").json["boards"][0]["defenses"][0]["draws"] == 5


def test_api_gives_the_overviews_data(app: Flask, client: FlaskClient, played: Played) -> None:
    data = client.get("/api/leaderboard").json
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


def test_matrix_colours_each_cell_shows_its_number_and_links_its_match(client: FlaskClient, played: Played) -> None:
    page = client.get("/matrix").get_data(as_text=True)
    cell = r'<td style="background: hsl\({hue}, 70%, 78%\)"><a href="/matches/(\d+)">{value}</a></td>'
    assert re.search(cell.format(hue=60, value="50.0%"), page)  # fgsm vs madry: robust 0.5
    assert re.search(cell.format(hue=30, value="25.0%"), page)  # fgsm vs plain: robust 0.25
    assert ">failed</a>" in page and ">pending<" in page
    assert 'class="legend"' in page and "the attack wins" in page
    success = client.get("/matrix?round=2&track=digits&threat=white-box&metric=success_rate").get_data(as_text=True)
    assert re.search(cell.format(hue=40, value=r"66\.7%"), success)  # fgsm vs plain: 2 breaks of 3 clean
    for match_id in match_ids(page):
        assert client.get(f"/matches/{match_id}").status_code == 200


def test_api_matrix_gives_the_pages_data(client: FlaskClient, played: Played) -> None:
    data = client.get("/api/matrix?round=2&metric=success_rate").json
    assert (data["track"], data["threat"], data["metric"]) == ("digits", "white-box", "success_rate")
    assert data["boards"] == [{"track": "digits", "threat": "white-box"}]
    assert [a["plugin"] for a in data["attacks"]] == ["fgsm", "crashy"]
    assert [d["plugin"] for d in data["defenses"]] == ["madry", "plain"]
    failed, pending = data["cells"][1]
    assert (failed["status"], failed["error"], pending["status"]) == ("failed", "<b>boom</b>", "pending")
    assert pending["result_id"] is None and failed["result_id"] is not None


def test_names_errors_and_logs_from_plugins_are_escaped(client: FlaskClient, played: Played) -> None:
    failed_id = client.get("/api/matrix?round=2").json["cells"][1][0]["result_id"]
    crashy_plugin = client.get("/api/matrix?round=2").json["attacks"][1]["plugin_id"]
    urls = ["/", "/matrix", "/teams", "/jobs", f"/matches/{failed_id}", f"/plugins/{crashy_plugin}", "/rounds"]
    for url in urls:
        page = client.get(url).get_data(as_text=True)
        assert EVIL not in page and "<b>boom" not in page and "<i>out of" not in page, url
    assert ESCAPED in client.get("/").get_data(as_text=True)
    assert "&lt;b&gt;boom&lt;/b&gt;" in client.get("/matrix").get_data(as_text=True)
    assert "log " + ESCAPED in client.get(f"/matches/{failed_id}").get_data(as_text=True)
    assert "&lt;i&gt;out of memory&lt;/i&gt;" in client.get("/jobs").get_data(as_text=True)


# --------------------------------------------------------------------------------------------------
# A match and its gallery
# --------------------------------------------------------------------------------------------------


def test_match_page_shows_metrics_outcomes_norms_and_gallery(client: FlaskClient, played: Played) -> None:
    match_id = client.get("/api/matrix?round=2").json["cells"][0][1]["result_id"]  # fgsm vs plain
    page = client.get(f"/matches/{match_id}").get_data(as_text=True)
    assert "fgsm" in page and "plain" in page and "white-box" in page
    assert "Robust accuracy" in page and "25.0%" in page and "66.7%" in page  # robust, success
    assert "broken by the attack" in page and "projected onto the budget" in page
    assert "Perturbation norms" in page
    data = client.get(f"/api/matches/{match_id}").json
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


def test_gallery_images_are_pngs_and_the_perturbation_is_amplified(client: FlaskClient, played: Played) -> None:
    match_id = client.get("/api/matrix?round=2").json["cells"][0][1]["result_id"]
    data = client.get(f"/api/matches/{match_id}").json
    broken = data["gallery"][1]  # sample 1 was broken: one pixel brightened by 50
    images = {}
    for kind, url in broken["images"].items():
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "image/png"
        images[kind] = Image.open(io.BytesIO(response.data))
    clean, adversarial, perturbation = images["clean"], images["adversarial"], images["perturbation"].convert("RGB")
    assert clean.size == adversarial.size == perturbation.size == (112, 112)  # 8x8 drawn 14 times larger
    assert data["amplification"] == pytest.approx(255 / 50)
    x, y = 3 * 14 + 7, 2 * 14 + 7  # the middle of pixel (row 2, column 3)
    assert adversarial.getpixel((x, y)) - clean.getpixel((x, y)) == 50
    assert perturbation.getpixel((x, y)) == (255, 0, 0)  # brightened at full contrast: red
    assert perturbation.getpixel((0, 0)) == (255, 255, 255)  # unchanged: white
    held = client.get(data["gallery"][0]["images"]["perturbation"])
    assert (np.asarray(Image.open(io.BytesIO(held.data)).convert("RGB")) == 255).all()  # nothing changed: white


def test_a_failed_match_shows_its_reason_and_log_tail(client: FlaskClient, played: Played) -> None:
    failed_id = client.get("/api/matrix?round=2").json["cells"][1][0]["result_id"]
    page = client.get(f"/matches/{failed_id}").get_data(as_text=True)
    assert "Why it failed" in page and "&lt;b&gt;boom&lt;/b&gt;" in page and "Log tail" in page
    data = client.get(f"/api/matches/{failed_id}").json
    assert data["status"] == "failed" and data["gallery"] == [] and data["outcomes"] is None
    assert data["log_tail"] == f"log {EVIL}"
    assert client.get(f"/matches/{failed_id}/gallery/0/clean.png").status_code == 404


# --------------------------------------------------------------------------------------------------
# Rounds and history
# --------------------------------------------------------------------------------------------------


def test_rounds_page_lists_every_round_with_its_leaders(client: FlaskClient, played: Played) -> None:
    page = client.get("/rounds").get_data(as_text=True)
    assert "Round 1" in page and "Round 2" in page and "published" in page
    data = client.get("/api/rounds").json
    assert [r["number"] for r in data["rounds"]] == [2, 1]
    (leaders,) = data["rounds"][0]["leaders"]
    assert (leaders["defense"], leaders["attack"]) == ("blue/madry", "red/fgsm")
    assert data["rounds"][0]["cells"] == {"ok": 2, "failed": 1, "pending": 1}


def test_history_shows_scores_over_rounds_who_broke_whom_and_survival(client: FlaskClient, rows: Rows) -> None:
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

    data = client.get("/api/rounds?track=digits&threat=white-box").json
    history = data["history"]
    assert history["rounds"] == [1, 2]
    assert {s["label"]: s["values"] for s in history["defenses"]} == {"blue/madry": [0.75, 0.0]}
    assert {s["label"]: s["values"] for s in history["attacks"]} == {"red/pgd": [0.0, 0.75], "green/weak": [0.25, 0.25]}
    (event,) = history["breaks"]
    assert (event["round"], event["attack"]["version_id"], event["defense"]["plugin"]) == (2, pgd2, "madry")
    (survival,) = history["survival"]
    assert (survival["rounds_survived"], survival["broken_in"], survival["standing"]) == (1, 2, False)
    page = client.get("/rounds").get_data(as_text=True)
    assert "Who broke whom" in page and "How long each defense survived" in page
    assert 'id="defense-chart"' in page and "vendor/chart.umd.min.js" in page
    embedded = re.search(r'<script id="history-data" type="application/json">(.*?)</script>', page, re.S)
    assert embedded and '"blue/madry"' in embedded.group(1)


def test_history_data_cannot_close_its_script_tag(client: FlaskClient, played: Played) -> None:
    page = client.get("/rounds").get_data(as_text=True)
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
    assert client.get(f"/api/teams/{blue['id']}").json["plugins"] == blue["plugins"]


def test_plugin_page_shows_versions_commits_hashes_and_results(client: FlaskClient, played: Played) -> None:
    fgsm = client.get("/api/matrix?round=2").json["attacks"][0]["plugin_id"]
    data = client.get(f"/api/plugins/{fgsm}").json
    (version,) = data["versions"]
    assert version["commit"] == "0123456789abcdef" and len(version["content_hash"]) == 64
    assert version["rounds"] == [1, 2] and version["valid"] and not data["never_validated"]
    assert sorted((r["threat"], r["opponent"]["plugin"]) for r in version["results"]) == [
        ("gray-box", "madry"), ("white-box", "madry"), ("white-box", "plain"),
    ]  # fmt: skip
    page = client.get(f"/plugins/{fgsm}").get_data(as_text=True)
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
    assert "never validated" in client.get("/teams").get_data(as_text=True)


def test_a_defenses_failed_training_is_shown_on_its_page(client: FlaskClient, played: Played) -> None:
    plain = client.get("/api/matrix?round=2").json["defenses"][1]["plugin_id"]
    (version,) = client.get(f"/api/plugins/{plain}").json["versions"]
    (failure,) = version["training_failures"]
    assert (failure["kind"], failure["error"]) == ("train-defense", "<i>out of memory</i>")
    assert "Training failed" in client.get(f"/plugins/{plain}").get_data(as_text=True)


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
    match_id = client.get("/api/matrix?round=2").json["cells"][0][0]["result_id"]
    assert client.get(f"/matches/{match_id}").headers["Cache-Control"] == "public, max-age=86400"
    image = client.get(f"/matches/{match_id}/gallery/0/clean.png")
    assert image.headers["Cache-Control"] == "public, max-age=31536000, immutable"


def test_pages_follow_new_results_of_a_running_round(client: FlaskClient, played: Played, rows: Rows) -> None:
    before = client.get("/api/leaderboard").json
    ids = {"attack_version_id": played.crashy, "defense_version_id": played.plain}
    rows.result(played.pending, [1, 1, 1, 1], **ids, track="digits", threat="white-box")
    after = client.get("/api/leaderboard").json
    assert before["cells"]["pending"] == 1 and after["cells"] == {"ok": 3, "failed": 1, "pending": 0}
    with rows.db.session() as s:  # the admin publishes the finished round
        round_ = s.get(Round, played.second)
        round_.status, round_.published, round_.finished_at = "done", True, datetime.now(UTC)
    frozen = client.get("/api/leaderboard?round=2")
    assert frozen.json["round"]["frozen"] and frozen.json["cells"] == after["cells"]
    assert frozen.headers["Cache-Control"] == "public, max-age=300"


def test_a_running_round_is_checked_again_only_after_the_refresh_time(app: Flask, played: Played, rows: Rows) -> None:
    client = app.test_client()
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
