"""`arena team import`: GitHub Classroom's exports and plain CSV files, checked whole before anything is written,
idempotent, each new team's credentials printed once; and the webhook secret of `arena team add|secret`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner, Result
from sqlalchemy import select

from arena.commands.cli import main
from arena.config import Settings
from arena.results import access
from arena.store import Database, Team, Token

#: an assignment's "Download grades" CSV as GitHub Classroom writes it, for a group assignment (a student who has
#: not accepted the assignment yet has no repository)
CLASSROOM_EXPORT = """\
"assignment_name","assignment_url","starter_code_url","github_username","roster_identifier",\
"student_repository_name","student_repository_url","submission_timestamp","points_awarded","points_available",\
"group_name"
"arena","https://classroom.github.com/classrooms/1-ml/assignments/arena","https://github.com/ml-class/arena-starter",\
"ada","ada@uni.example","arena-red-team","https://github.com/ml-class/arena-red-team","2026-12-01 10:00:00 UTC","0",\
"0","Red Team"
"arena","https://classroom.github.com/classrooms/1-ml/assignments/arena","https://github.com/ml-class/arena-starter",\
"alan","alan@uni.example","arena-red-team","https://github.com/ml-class/arena-red-team","2026-12-01 10:05:00 UTC","0",\
"0","Red Team"
"arena","https://classroom.github.com/classrooms/1-ml/assignments/arena","https://github.com/ml-class/arena-starter",\
"grace","grace@uni.example","arena-blue","https://github.com/ml-class/arena-blue","","0","0","blue"
"arena","https://classroom.github.com/classrooms/1-ml/assignments/arena","https://github.com/ml-class/arena-starter",\
"edsger","edsger@uni.example","","","","0","0",""
"""
#: the classroom's roster (Students tab, "Download"): no repository in it
CLASSROOM_ROSTER = """\
"identifier","github_username","github_id","name"
"ada@uni.example","ada","101","Ada Lovelace"
"alan@uni.example","alan","102","Alan Turing"
"grace@uni.example","","",""
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def teams(db: Database) -> dict[str, tuple[str | None, str, str | None, str | None]]:
    with db.session() as session:
        return {t.name: (t.repo_url, t.branch, t.path, t.hook_secret) for t in session.scalars(select(Team))}


def open_db() -> Database:
    db = Database(Settings.from_env().database_url)
    db.upgrade()
    return db


def credentials(output: str) -> dict[str, dict[str, str]]:
    """The board tokens and webhook secrets an import printed, by team."""
    found: dict[str, dict[str, str]] = {}
    for kind, team, value in re.findall(r"^(board token|webhook secret) of team (\S+) \(.*\): (\S+)$", output, re.M):
        found.setdefault(team, {})[kind] = value
    return found


def test_a_classroom_export_imports_a_team_per_repository_once(arena_home: Path, tmp_path: Path) -> None:
    export = tmp_path / "arena-grades.csv"
    export.write_text(CLASSROOM_EXPORT)

    first = run("team", "import", str(export))
    db = open_db()
    stored = teams(db)
    second = run("team", "import", str(export))

    assert first.exit_code == 0, first.output
    assert "(github classroom export): 2 new, 0 updated, 0 unchanged" in first.output
    assert "line 5: edsger has no repository yet" in first.output
    assert set(stored) == {"Red-Team", "blue"}
    assert stored["Red-Team"][:3] == ("https://github.com/ml-class/arena-red-team", "main", None)
    printed = credentials(first.output)
    assert set(printed) == {"Red-Team", "blue"}
    with db.session() as session:
        for name, shown in printed.items():
            team_id = session.scalar(select(Team.id).where(Team.name == name))
            assert access.viewer(session, access.digest(shown["board token"])) == access.Viewer(team_id)
            assert shown["board token"] not in {t.digest for t in session.scalars(select(Token))}  # its hash only
            assert stored[name][3] == shown["webhook secret"]
    assert second.exit_code == 0 and "0 new, 0 updated, 2 unchanged" in second.output
    assert credentials(second.output) == {} and teams(db) == stored  # nothing shown or changed twice


def test_a_classroom_roster_needs_a_pattern_for_the_repositories(arena_home: Path, tmp_path: Path) -> None:
    roster = tmp_path / "classroom_roster.csv"
    roster.write_text(CLASSROOM_ROSTER)

    refused = run("team", "import", str(roster))
    pattern = "https://github.com/ml-class/arena-{github_username}.git"
    imported = run("team", "import", str(roster), "--repo-pattern", pattern, "--branch", "trunk", "--json")

    assert refused.exit_code == 1 and "names no repository: give --repo-pattern" in refused.output
    assert imported.exit_code == 0, imported.output
    rows = json.loads(imported.output)
    assert [(r["name"], r["repo"], r["branch"], r["status"]) for r in rows] == [
        ("ada", "https://github.com/ml-class/arena-ada.git", "trunk", "new"),
        ("alan", "https://github.com/ml-class/arena-alan.git", "trunk", "new"),
    ]
    assert all(r["token"] and r["secret"] for r in rows)
    assert teams(open_db())["ada"][3] == rows[0]["secret"]


def test_a_plain_file_with_bad_rows_adds_nothing_and_names_every_bad_line(arena_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "class.csv"
    bad.write_text(
        "name,repo,branch,path\n"
        "lion,git@git.example.org:class/arena.git,main,teams/lion\n"
        "bad name,git@git.example.org:class/bad.git,,\n"  # line 3: a space in the name
        "tiger,,main,\n"  # line 4: no repository
        "puma,git@git.example.org:class/puma.git,no..branch,\n"  # line 5
        "lynx,git@git.example.org:class/arena.git,main,../escape\n"  # line 6
        "lion,git@git.example.org:class/other.git,main,\n"  # line 7: lion again, elsewhere
        "ocelot,https://git.example.org/class/arena,main,teams/lion\n"  # line 8: lion's repository and folder
        "arena,git@git.example.org:class/builtin.git,,\n"  # line 9: the built-ins' name
    )
    good = tmp_path / "good.csv"
    good.write_text(
        "lion,git@git.example.org:class/arena.git,main,teams/lion\n\ntiger,git@git.example.org:class/arena.git,,teams/tiger\n"
    )

    refused = run("team", "import", str(bad))
    plain = run("team", "import", str(good))
    clash = tmp_path / "clash.csv"
    clash.write_text("team,url,folder\njaguar,https://git.example.org/class/arena.git,teams/tiger\n")
    clashed = run("team", "import", str(clash))

    assert refused.exit_code == 1 and "nothing imported" in refused.output
    assert [int(n) for n in re.findall(r"^line (\d+):", refused.output, re.M)] == [3, 4, 5, 6, 7, 8, 9]
    assert "another team's" not in refused.output and "has the repository and folder of team lion" in refused.output
    assert plain.exit_code == 0 and "(plain csv): 2 new" in plain.output
    assert teams(open_db())["tiger"][:3] == ("git@git.example.org:class/arena.git", "main", "teams/tiger")
    assert (
        clashed.exit_code == 1 and "line 2: team jaguar has the repository and folder of team tiger" in clashed.output
    )
    assert set(teams(open_db())) == {"lion", "tiger"}


def test_a_changed_row_updates_its_team_without_new_credentials(arena_home: Path, tmp_path: Path) -> None:
    roster = tmp_path / "class.csv"
    roster.write_text("name,repo\nfox,https://gitea.example.org/class/fox.git\n")
    run("team", "import", str(roster))
    secret = teams(open_db())["fox"][3]
    roster.write_text("name,repo,branch\nfox,https://gitea.example.org/class/fox.git,dev\n")

    updated = run("team", "import", str(roster))

    assert "0 new, 1 updated, 0 unchanged" in updated.output and "updated team fox" in updated.output
    assert credentials(updated.output) == {} and teams(open_db())["fox"][1:] == ("dev", None, secret)


def test_team_add_prints_a_webhook_secret_and_team_secret_replaces_it(arena_home: Path) -> None:
    added = run("team", "add", "owl", "--repo", "https://github.com/class/owl.git")
    shown = credentials(added.output)["owl"]["webhook secret"]
    stored = teams(open_db())["owl"][3]
    renewed = run("team", "secret", "owl")
    unknown = run("team", "secret", "nobody")

    assert added.exit_code == 0 and stored == shown
    assert renewed.exit_code == 0 and credentials(renewed.output)["owl"]["webhook secret"] == teams(open_db())["owl"][3]
    assert teams(open_db())["owl"][3] != shown
    assert unknown.exit_code == 1 and "no team 'nobody'" in unknown.output
