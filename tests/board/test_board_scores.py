"""Scores wherever the board shows them: budget violations, forfeits, diagnostics, a team's own standing.

Over Flask's test client and a real SQLite database (fixtures: tests/board/conftest.py)."""

from __future__ import annotations

import re

import pytest
from board_data import EVIL, BoardRows, Played, match_ids, plugin_id, sign_in
from flask import Flask
from flask.testing import FlaskClient

from arena.store import PluginVersion
from leaderboard.caching import Recent

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
