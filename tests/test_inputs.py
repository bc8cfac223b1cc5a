"""A worker reads a match's immutable inputs from the database once, within its byte budget."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from arena.execution.inputs import Inputs
from arena.store import Artifact, Database


def add(database: Database, key: str, kind: str, size: int) -> None:
    with database.session() as session:
        session.add(Artifact(key=key, kind=kind, track="digits", data=bytes([len(key)]) * size, meta={}))


@pytest.fixture
def statements(database: Database) -> list[str]:
    """The SQL statements the database runs from now on."""
    seen: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def read(inputs: Inputs, database: Database, keys: list[str]) -> dict[str, bytes]:
    with database.session() as session:
        return inputs.artifacts(session, keys)


def test_artifacts_are_read_once_then_kept(database: Database, statements: list[str]) -> None:
    add(database, "defense-1", "defense", 100)
    add(database, "evaluation-1", "evaluation", 300)
    inputs = Inputs()
    first = read(inputs, database, ["defense-1", "evaluation-1", "twin-1"])
    assert first == {"defense": bytes([9]) * 100, "evaluation": bytes([12]) * 300}
    asked = sum("artifacts" in s for s in statements)
    assert read(inputs, database, ["defense-1", "evaluation-1"]) == first
    assert sum("artifacts" in s for s in statements) == asked  # nothing read again
    add(database, "twin-1", "twin", 10)  # an input that did not exist yet is read once it does
    assert read(inputs, database, ["defense-1", "twin-1"]) == {"defense": first["defense"], "twin": bytes([6]) * 10}


def test_the_least_recently_used_artifacts_go_beyond_the_budget(database: Database, statements: list[str]) -> None:
    for number in range(3):
        add(database, f"defense-{number}", "defense", 400)
    inputs = Inputs(budget=1000)
    for number in (0, 1, 0, 2):  # 2 pushes out 1, the least recently used
        read(inputs, database, [f"defense-{number}"])
    before = len(statements)
    read(inputs, database, ["defense-0", "defense-2"])
    assert len(statements) == before  # both kept
    read(inputs, database, ["defense-1"])
    assert len(statements) > before  # read again
