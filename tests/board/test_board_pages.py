"""The board's pages and JSON API: empty states, overview, matrix, a match, rounds, jobs, rules, exports, the game.

Over Flask's test client and a real SQLite database (fixtures: tests/board/conftest.py)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from board_data import APIS, ESCAPED, EVIL, PAGES, BoardRows, Played, failed_match, match_ids, sign_in
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from test_scoring import Rows

from arena.commands.cli import main
from arena.config import Settings
from arena.results.scoring import round_standings
from arena.rules.hookspecs import THREATS
from arena.rules.tracks import TRACKS
from arena.store import Round
from leaderboard import create_app

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
