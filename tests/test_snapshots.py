"""A published round's standings are scored once, at publication, and read back by the board."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update
from test_scoring import Rows

from arena.plan import planner
from arena.results import snapshots
from arena.results.scoring import round_standings
from arena.store import Database, Result, Round, RoundStandings
from leaderboard import create_app


@pytest.fixture
def played(tmp_path: Path) -> tuple[Database, int]:
    """A done round with an ok, a failed and a below-floor cell, two tracks and two threats."""
    db = Database(f"sqlite:///{tmp_path / 'arena.db'}")
    db.upgrade()
    rows = Rows(db)
    rows.track("digits", clean_floor=0.8)
    rows.track("mnist-linf", clean_floor=0.97)
    fgsm, crashy = rows.version("red", "fgsm", "attack"), rows.version("green", "crashy", "attack")
    madry, plain = rows.version("blue", "madry", "defense"), rows.version("blue", "plain", "defense")
    round_id = rows.round(1, tracks=("digits", "mnist-linf"), status="done")
    rows.match(round_id, fgsm, madry, [1, 1, 1, 0])
    rows.match(round_id, fgsm, plain, [0, 0, 0, 1], clean=[0, 1, 1, 1])
    rows.match(round_id, crashy, madry, status="failed", error="boom")
    rows.match(round_id, fgsm, madry, [1, 0, 1, 0], threat="gray-box", metrics={"violations": 2, "draws": 3})
    rows.match(round_id, fgsm, plain, [1, 1], track="mnist-linf")
    yield db, round_id
    db.dispose()


def test_publishing_keeps_the_boards_exactly_as_scored(played: tuple[Database, int]) -> None:
    db, round_id = played
    planner.publish_round(db, round_id)
    with db.session() as session:
        kept = snapshots.load(session, round_id)
        assert kept is not None and kept == round_standings(session, round_id)
        assert len(kept) == 3 and any(
            cell and cell.status == "failed" for b in kept for row in b.matrix for cell in row
        )
        row = session.scalar(select(RoundStandings))
        assert row.scoring_version == snapshots.SCORING_VERSION and len(row.boards) < 10_000  # compressed


def test_boards_kept_by_other_scoring_code_are_scored_afresh(played: tuple[Database, int]) -> None:
    db, round_id = played
    planner.publish_round(db, round_id)
    with db.session() as session:
        session.execute(update(RoundStandings).values(scoring_version="older"))
    with db.session() as session:
        assert snapshots.load(session, round_id) is None


def test_the_board_reads_a_published_round_from_its_snapshot(played: tuple[Database, int], tmp_path: Path) -> None:
    db, round_id = played
    planner.publish_round(db, round_id)
    with db.session() as session:  # without its per-sample records, only the snapshot can tell the scores
        session.execute(update(Result).values(samples=None))
        assert session.get(Round, round_id).published
    app = create_app({"DATABASE_URL": db.url, "ARENA_HOME": str(tmp_path / "home"), "STANDINGS_REFRESH": 0})
    board = app.test_client().get("/api/leaderboard?round=1").json["boards"][0]
    assert [(d["entry"]["plugin"], d["worst_case_robust_accuracy"]) for d in board["defenses"]] == [
        ("madry", 0.75),
        ("plain", 0.25),
    ]
    app.extensions["arena_db"].dispose()
