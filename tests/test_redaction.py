"""Credentials in a repository URL reach no page, no JSON, no CLI output and no error (issue 14, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from arena.commands.cli import main
from arena.results.redaction import redact
from leaderboard import create_app

TOKEN = "ghp_S3cr3tT0kenOfTheRedTeam"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://student:{TOKEN}@git.example.org/red.git", "https://student:***@git.example.org/red.git"),
        (f"https://{TOKEN}@git.example.org/red.git", "https://***@git.example.org/red.git"),
        (
            f"http://a:{TOKEN}@127.0.0.1:3000/r.git and https://b:{TOKEN}@x/y",
            "http://a:***@127.0.0.1:3000/r.git and https://b:***@x/y",
        ),
        ("ssh://git@git.example.org/red.git", "ssh://git@git.example.org/red.git"),
        ("git@git.example.org:red.git", "git@git.example.org:red.git"),
        ("/srv/git/red.git", "/srv/git/red.git"),
    ],
)
def test_redact_hides_passwords_and_lone_tokens(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert redact(None) is None


def test_a_token_in_a_repository_url_is_shown_nowhere(arena_home: Path) -> None:
    runner = CliRunner()
    url = f"https://student:{TOKEN}@127.0.0.1:9/red.git"
    added = runner.invoke(main, ["team", "add", "red", "--repo", url])
    listed = runner.invoke(main, ["team", "list"])
    synced = runner.invoke(main, ["sync", "--team", "red"])
    assert added.exit_code == 0 and "red" in listed.output and synced.exit_code == 1
    for out in (added, listed, synced):
        assert TOKEN not in out.output and "student:***@127.0.0.1:9" in out.output + listed.output
    app = create_app({"TESTING": True})
    client = app.test_client()
    for page in ("/teams", "/api/teams", "/teams/1", "/api/teams/1"):
        text = client.get(page).get_data(as_text=True)
        assert TOKEN not in text and "***@127.0.0.1:9" in text, page
    app.extensions["arena_db"].dispose()


def board_token(output: str) -> str:
    """The token a command printed."""
    (line,) = [line for line in output.splitlines() if line.startswith("board token of")]
    return line.rsplit(": ", 1)[1]


def test_a_teams_board_token_is_printed_once_signs_in_and_a_new_one_retires_it(arena_home: Path) -> None:
    runner = CliRunner()
    first = board_token(runner.invoke(main, ["team", "add", "red", "--repo", "/srv/red.git"]).output)
    assert "board token" not in runner.invoke(main, ["team", "add", "red", "--repo", "/srv/red2.git"]).output
    rotated = runner.invoke(main, ["team", "token", "red"])
    instructor = runner.invoke(main, ["team", "token", "--admin"])
    assert rotated.exit_code == instructor.exit_code == 0 and "the instructor" in instructor.output
    second, admin = board_token(rotated.output), board_token(instructor.output)
    app = create_app({"TESTING": True})
    assert app.test_client().post("/signin", data={"token": first}).status_code == 403, "retired by the new one"
    for token, who in ((second, "red"), (admin, "the instructor")):
        client = app.test_client()
        assert client.post("/signin", data={"token": token}).status_code == 302
        page = client.get("/teams").get_data(as_text=True)
        assert f"signed in as {who}" in page and token not in page
    app.extensions["arena_db"].dispose()
    assert runner.invoke(main, ["team", "token"]).exit_code == 2
    missing = runner.invoke(main, ["team", "token", "blue"])
    assert missing.exit_code == 1 and "no team 'blue'" in missing.output
