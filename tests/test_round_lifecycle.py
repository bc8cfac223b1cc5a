"""Rounds of the repeated game through the CLI: open, close (freeze, plan incrementally, run), publish, list."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from arena import config
from arena.commands.cli import main
from arena.config import Settings
from arena.store import Database, Round

BUILTIN = Path(__file__).resolve().parents[1] / "plugins"
TINY = """
[tracks.tiny]
base = "digits"
eval_size = 30
batch_size = 30
epochs = 2
max_queries = 10
time_limit = 120
"""


@pytest.fixture
def arena(arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with the tiny track, two built-ins only (fgsm, undefended) and a students' folder; returns it."""
    arena_home.mkdir(parents=True)
    (arena_home / "tracks.toml").write_text(TINY)
    builtins = tmp_path / "builtins"
    for kind, name in (("attacks", "fgsm"), ("defenses", "undefended")):
        shutil.copytree(BUILTIN / kind / name, builtins / kind / name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(config, "BUILTIN_PLUGIN_DIRS", (builtins / "attacks", builtins / "defenses"))
    students = tmp_path / "students"
    folder = shutil.copytree(BUILTIN / "attacks" / "fgsm", students / "attacks" / "step")
    manifest = folder / "plugin.toml"
    manifest.write_text(
        'module = "fgsm"\n' + manifest.read_text().replace('"fgsm"', '"step"').replace("arena", "students")
    )
    monkeypatch.setenv("ARENA_PLUGIN_DIRS", str(students))
    return students


def arena_cli(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    return result


@pytest.mark.slow
def test_a_round_opens_closes_incrementally_and_publishes(arena: Path) -> None:
    opened = arena_cli("round", "open", "--track", "tiny")
    assert opened.exit_code == 0 and "round 1 open on tiny" in opened.output
    again = arena_cli("round", "open", "--track", "tiny")
    assert again.exit_code != 0 and "round 1 is still open" in again.output
    assert arena_cli("round", "run", "--track", "tiny").exit_code != 0  # `round run` opens a round too
    assert "not done" not in arena_cli("round", "list").output and "open" in arena_cli("round", "list").output
    early = arena_cli("round", "publish", "1")
    assert early.exit_code != 0 and "round 1 is open: publish it once it is done" in early.output

    first = arena_cli("round", "close", "--quiet")

    assert first.exit_code == 0, first.output
    assert "round 1 closed: 3 plugin versions frozen; 4 matches, 0 reused from earlier results; 7 new jobs:" in (
        first.output
    )
    assert "2 match: new attack version students/step@" in first.output
    assert "2 match: new attack version arena/fgsm@" in first.output
    assert "1 train-defense: new defense version arena/undefended@" in first.output
    assert "jobs: {'done': 7}" in first.output
    published = arena_cli("round", "publish")
    assert published.exit_code == 0 and "round 1 published" in published.output

    code = arena / "attacks" / "step" / "fgsm.py"
    code.write_text(code.read_text() + "\n# a new version\n")
    assert arena_cli("round", "open", "--track", "tiny", "--closes-at", "+2h").exit_code == 0
    not_due = arena_cli("round", "close", "--due")
    assert "round 2 is not due yet" in not_due.output
    db = Database(Settings.from_env().database_url)
    with db.session() as session:
        session.scalar(select(Round).where(Round.number == 2)).closes_at = datetime.now(UTC) - timedelta(minutes=1)

    second = arena_cli("round", "close", "--due", "--quiet")

    assert second.exit_code == 0, second.output
    assert "4 matches, 2 reused from earlier results; 2 new jobs:" in second.output  # only the new row
    assert "2 match: new attack version students/step@" in second.output
    rounds = json.loads(arena_cli("round", "list", "--json").output)
    assert [(r["number"], r["status"], r["published"], r["versions"], r["matches"]) for r in rounds] == [
        (1, "done", True, 3, 4),
        (2, "done", False, 3, 4),
    ]
    results = arena_cli("results", "--round", "2")
    assert "students/step" in results.output and "arena/undefended" in results.output


def test_round_commands_explain_what_they_cannot_do(arena: Path) -> None:
    assert "no rounds yet" in arena_cli("round", "list").output
    closing = arena_cli("round", "close")
    assert closing.exit_code != 0 and "no round is open" in closing.output
    assert "no finished round yet" in arena_cli("round", "publish").output
    past = arena_cli("round", "open", "--track", "tiny", "--closes-at", "2020-01-01T00:00")
    assert past.exit_code != 0 and "has passed already" in past.output
    odd = arena_cli("round", "open", "--track", "tiny", "--closes-at", "tomorrow")
    assert odd.exit_code != 0 and "give an ISO time" in odd.output
    unknown = arena_cli("round", "open", "--track", "nowhere")
    assert unknown.exit_code != 0 and "unknown track(s) nowhere" in unknown.output
    scheduled = arena_cli("round", "open", "--track", "tiny", "--closes-at", "2099-01-01T12:00+02:00")
    assert "closes 2099-01-01 10:00 UTC" in scheduled.output
    listed = arena_cli("round", "list")
    assert "open" in listed.output and "closes 2099-01-01T10:00" in listed.output
