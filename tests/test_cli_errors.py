"""The `arena` command ends the arena's own errors with one readable line and status 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from arena.commands.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_an_unknown_builtin_is_named_with_the_known_ones(arena_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_BUILTINS", "fgsm,no-such-attack")
    code, output = run("plugins", "list")
    assert code == 1
    assert "Error: ARENA_BUILTINS names unknown plugins ['no-such-attack']" in output
    assert "undefended" in output and "Traceback" not in output


def test_a_broken_tracks_file_is_reported(arena_home: Path) -> None:
    arena_home.mkdir(parents=True)
    (arena_home / "tracks.toml").write_text('[tracks.tiny]\nbase = "nowhere"\n')
    code, output = run("round", "open")
    assert code == 1
    assert "base 'nowhere' is not a known track" in output and "Traceback" not in output


def test_an_unreachable_database_is_reported(arena_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_DATABASE_URL", "postgresql+psycopg://arena@127.0.0.1:1/arena")
    code, output = run("results")
    assert code == 1
    assert output.startswith("Error: the database does not answer:") and "Traceback" not in output
