"""The lecture replayed (arena.results.course): each claim's verdict from a round's boards, and `arena course` end
to end with its Lessons page on the board."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from test_rounds import TINY, write_plugin

from arena.commands.cli import main
from arena.config import Settings
from arena.results import access, course
from arena.results.boards import AttackStanding, Board, Cell, DefenseStanding, Entry
from arena.store import Database, Result, Round, RoundMatch
from leaderboard import create_app

WHITE, GRAY, BLACK = course.WHITE, course.GRAY, course.BLACK
_ids = itertools.count(1)

#: robust accuracy and success rate of (attack, defense) cells that have the papers' shapes, white-box
SHAPED = {
    ("fgsm", "undefended"): (0.05, 0.95),
    ("fgsm", "fgsm-adv-training"): (0.90, 0.07),
    ("rand-fgsm", "fgsm-adv-training"): (0.40, 0.58),
    ("fgsm", "distillation"): (0.90, 0.06),
    ("pgd", "distillation"): (0.88, 0.10),
    ("pgd", "undefended"): (0.00, 1.00),
    ("cw-l2", "distillation"): (0.01, 0.99),
    ("pgd", "pgd-adv-training"): (0.80, 0.17),
    ("ifgsm", "undefended"): (0.01, 0.99),
}
TRANSFER = {"undefended": 0.55, "fgsm-adv-training": 0.45, "ensemble-adv-training": 0.95, "defense-gan": 0.80}


def entry(name: str, team: str = "arena") -> Entry:
    number = next(_ids)
    return Entry(number, team, name, "0" * 12, None, number, 1)


def board(track: str, threat: str, cells: dict[tuple[str, str], tuple[float, float]], team: str) -> Board:
    """A board of ``team``'s plugins with these cells (robust accuracy, success rate)."""
    attacks = sorted({a for a, _ in cells})
    defenses = sorted({d for _, d in cells})
    standings = [DefenseStanding(entry(d, team), 0.98, None, None, 1, 0, 0, 0, False, 1) for d in defenses]
    rows = [AttackStanding(entry(a, team), None, 0, None, None, None, None, 1, 0, 0, 0) for a in attacks]
    matrix: list[list[Cell | None]] = [
        [Cell("ok", f"{a}/{d}", None, *cells[a, d]) if (a, d) in cells else None for d in defenses] for a in attacks
    ]
    return Board(track, threat, 0.9, standings, rows, matrix)


#: robust accuracy against the strongest white-box attack (here autoattack) per defense
STRONGEST = {"pgd-adv-training": 0.75, "undefended": 0.0, "fgsm-adv-training": 0.0, "distillation": 0.0}
STRONGEST |= {"ensemble-adv-training": 0.0, "magnet": 0.30, "defense-gan": 0.15}


def round_boards(shaped: dict[tuple[str, str], tuple[float, float]], team: str = "arena") -> list[Board]:
    """The boards of a round on digits and digits-physical whose figures have every paper's shape."""
    white = {("autoattack", d): (r, 1 - r) for d, r in STRONGEST.items()} | shaped
    black = {("transfer", d): (r, 1 - r) for d, r in TRANSFER.items()} | {("simba", "magnet"): (0.9, 0.1)}
    photo = {("fgsm", "undefended"): (0.40, 0.55), ("ifgsm", "undefended"): (0.80, 0.15)}
    return [
        board("digits", WHITE, white, team),
        board("digits", GRAY, {("autoattack", "magnet"): (0.6, 0.4)}, team),
        board("digits", BLACK, black, team),
        board("digits-physical", WHITE, photo, team),
    ]


def verdicts(boards: list[Board], track: str = "digits") -> dict[str, str]:
    return {lesson.key: lesson.verdict for lesson in course.lessons(boards, track)}


def test_every_claim_is_reproduced_when_the_figures_have_the_papers_shapes() -> None:
    judged = course.lessons(round_boards(SHAPED), "digits")
    assert {lesson.verdict for lesson in judged} == {"reproduced"}, [(j.key, j.why) for j in judged]
    assert [lesson.key for lesson in judged] == [claim.key for claim in course.CLAIMS]
    physical = judged[-1]
    assert physical.why == "the photo destroys 42% of FGSM's success (95% -> 55%) and 85% of I-FGSM's (99% -> 15%)"
    assert all(lesson.papers and lesson.published for lesson in judged)


@pytest.mark.parametrize(
    ("key", "change", "reason"),
    [
        ("fgsm-undefended", {("fgsm", "undefended"): (0.6, 0.35)}, "less than half"),
        ("fgsm-training", {("fgsm", "fgsm-adv-training"): (0.2, 0.8)}, "does not resist FGSM itself"),
        ("fgsm-training", {("rand-fgsm", "fgsm-adv-training"): (0.9, 0.1)}, None),
        ("distillation", {("pgd", "distillation"): (0.1, 0.9)}, "gradient attacks are not stopped"),
        ("distillation", {("cw-l2", "distillation"): (0.8, 0.2)}, "does not take half"),
        ("madry", {("pgd", "pgd-adv-training"): (0.1, 0.9)}, "does not keep 20 points more"),
        ("madry", {("autoattack", "ensemble-adv-training"): (0.8, 0.2)}, "there, ensemble-adv-training, keeps 80%"),
        ("magnet", {("autoattack", "magnet"): (0.85, 0.15)}, None),
        ("defense-gan", {("autoattack", "defense-gan"): (0.85, 0.15)}, None),
        ("physical", {("ifgsm", "undefended"): (0.01, 0.2)}, None),
    ],
)
def test_a_claim_whose_figures_miss_the_shape_is_not_reproduced(
    key: str, change: dict[tuple[str, str], tuple[float, float]], reason: str | None
) -> None:
    boards = round_boards(SHAPED | change)
    if key == "fgsm-training" and reason is None:  # RAND+FGSM no better than FGSM, and transfer neither
        boards[2] = board("digits", BLACK, {("transfer", "fgsm-adv-training"): (0.95, 0.03)}, "arena")
    if key == "physical":  # I-FGSM keeps its success through the photo: the paper's shape reversed
        boards[3] = board(
            "digits-physical",
            WHITE,
            {("fgsm", "undefended"): (0.9, 0.1), ("ifgsm", "undefended"): (0.5, 0.5)},
            "arena",
        )
    judged = {lesson.key: lesson for lesson in course.lessons(boards, "digits")}
    assert judged[key].verdict == "not reproduced", judged[key].why
    if reason:
        assert reason in judged[key].why


def test_a_claim_without_its_matches_is_not_played_and_says_which() -> None:
    boards = round_boards({k: v for k, v in SHAPED.items() if k[1] != "distillation"})
    judged = {lesson.key: lesson for lesson in course.lessons(boards[:3], "digits")}
    assert judged["distillation"].verdict == "not played"
    assert "robust accuracy of distillation against fgsm, white-box" in judged["distillation"].why
    assert judged["physical"].verdict == "not played" and "printed and photographed" in judged["physical"].why
    assert judged["fgsm-undefended"].verdict == "reproduced"
    assert verdicts(round_boards(SHAPED), "mnist-l2") == dict.fromkeys(verdicts(boards), "not played")


def test_only_the_built_in_plugins_are_read() -> None:
    """A team's plugins named like the built-ins never feed the lessons (the page is public)."""
    assert set(verdicts(round_boards(SHAPED, team="students")).values()) == {"not played"}


def test_the_markdown_report_has_a_section_per_claim() -> None:
    text = course.markdown(course.lessons(round_boards(SHAPED), "digits"), "digits", 4)
    assert text.startswith("# The lecture replayed on digits, round 4")
    for claim in course.CLAIMS:
        assert f"## {claim.title}: reproduced" in text and f"](#{claim.key}) | reproduced |" in text
    assert "| success rate of fgsm against undefended, white-box | 95% |" in text
    assert "https://arxiv.org/abs/1706.06083" in text


# --------------------------------------------------------------------------------------------------
# `arena course` end to end
# --------------------------------------------------------------------------------------------------

STUDENT = """
from arena import Attack, hookimpl

class Noise(Attack):
    def run(self, target, x, y, budget):
        return x

@hookimpl
def arena_attacks():
    return [Noise]
"""


@pytest.mark.slow
def test_arena_course_plays_the_built_ins_alone_and_the_board_shows_its_lessons(
    arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena_home.mkdir(parents=True, exist_ok=True)
    (arena_home / "tracks.toml").write_text(TINY)
    write_plugin(tmp_path / "students", "noise", "attack", STUDENT)
    monkeypatch.setenv("ARENA_PLUGIN_DIRS", str(tmp_path / "students"))
    monkeypatch.setenv("ARENA_BUILTINS", "fgsm,rand-fgsm,transfer,undefended,fgsm-adv-training")
    runner = CliRunner()

    first = runner.invoke(main, ["course", "--track", "tiny", "--quiet"])
    assert first.exit_code == 0, first.output
    report = (arena_home / "course-tiny.md").read_text()
    assert "reproduced" in first.output and "report: " in first.output
    assert "## FGSM fools an undefended network: " in report and "not played" in report  # no distillation here
    settings = Settings.from_env()
    db = Database(settings.database_url)
    with db.session() as session:
        (round_,) = session.scalars(select(Round)).all()
        assert round_.status == "done" and not round_.published
        teams = {entry.plugin_version.plugin.team.name for entry in round_.entries}
        assert teams == {"arena"}, "the students' attack is not in the course's round"
        keys = set(session.scalars(select(RoundMatch.result_key).where(RoundMatch.round_id == round_.id)))
        assert session.scalar(select(Result).where(Result.key.in_(keys), Result.status != "ok")) is None

    again = runner.invoke(main, ["course", "--track", "tiny", "--round", "1", "--out", str(tmp_path / "r.md")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r.md").read_text() == report, "reading the round gives the report it played"
    missing = runner.invoke(main, ["course", "--track", "digits", "--round", "1"])
    assert missing.exit_code != 0 and "round 1 did not play digits (it played tiny)" in missing.output

    app = create_app({"TESTING": True, "DATABASE_URL": settings.database_url, "ARENA_HOME": str(arena_home)})
    public = app.test_client()
    assert public.get("/api/lessons").json["withheld"] is True, "an unpublished round's lessons are the instructor's"
    instructor = app.test_client()
    with db.session() as session:
        token = access.issue(session, None)
    assert instructor.post("/signin", data={"token": token}).status_code == 302
    data = instructor.get("/api/lessons?round=1").json
    assert data["track"] == "tiny" and data["tracks"] == ["tiny"] and not data["withheld"]
    by_key = {lesson["key"]: lesson for lesson in data["lessons"]}
    assert by_key["fgsm-undefended"]["verdict"] != "not played"
    assert f"## FGSM fools an undefended network: {by_key['fgsm-undefended']['verdict']}" in report
    page = instructor.get("/lessons?round=1").get_data(as_text=True)
    assert "The lecture replayed on tiny" in page and "Goodfellow, Shlens and Szegedy" in page
    assert instructor.get("/api/lessons?round=1&track=digits").status_code == 404

    assert runner.invoke(main, ["round", "publish", "1"]).exit_code == 0
    assert public.get("/api/lessons").json["lessons"] == data["lessons"]
    db.dispose()
