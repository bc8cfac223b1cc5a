"""Credentials in a repository URL reach no page, no JSON, no CLI output and no error (issue 14, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from arena.cli import main
from arena.redaction import redact
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
