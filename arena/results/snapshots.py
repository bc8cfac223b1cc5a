"""A published round's standings, kept in the database: scored once when it is published, read back by the board.

A published round never changes (its results are written once, its matrix is fixed), so ``arena round
publish`` scores its boards once and stores them compressed (:class:`arena.store.RoundStandings`); a board
process that starts reads them instead of decoding the round's per-sample records again (seconds at class
size). Boards scored by other code (:data:`SCORING_VERSION`, a digest of the scoring modules) are ignored,
and the round is scored afresh.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.results import diagnostics, scoring
from arena.results.boards import AttackStanding, Board, Cell, DefenseStanding, Entry
from arena.results.scoring import round_standings
from arena.store import RoundStandings

#: the code that scored a snapshot: a change to scoring or diagnostics makes earlier snapshots stale
SCORING_VERSION = hashlib.sha256(
    b"".join(Path(module.__file__).read_bytes() for module in (scoring, diagnostics) if module.__file__)
).hexdigest()[:16]


def store(session: Session, round_id: int) -> None:
    """Score the round and keep its boards (replacing an earlier snapshot)."""
    boards = round_standings(session, round_id)
    blob = zlib.compress(json.dumps([board.as_dict() for board in boards]).encode(), 6)
    row = session.scalar(select(RoundStandings).where(RoundStandings.round_id == round_id))
    if row is None:
        session.add(RoundStandings(round_id=round_id, scoring_version=SCORING_VERSION, boards=blob))
    else:
        row.scoring_version, row.boards = SCORING_VERSION, blob


def load(session: Session, round_id: int) -> list[Board] | None:
    """The round's kept boards, or None (none kept, or kept by other scoring code)."""
    query = select(RoundStandings.scoring_version, RoundStandings.boards).where(RoundStandings.round_id == round_id)
    row = session.execute(query).first()
    if row is None or row.scoring_version != SCORING_VERSION:
        return None
    return [_board(data) for data in json.loads(zlib.decompress(row.boards))]


def _board(data: dict[str, Any]) -> Board:
    """A board from :meth:`Board.as_dict`'s data."""
    return Board(
        track=data["track"],
        threat=data["threat"],
        clean_floor=data["clean_floor"],
        defenses=[DefenseStanding(**(line | {"entry": Entry(**line["entry"])})) for line in data["defenses"]],
        attacks=[AttackStanding(**(line | {"entry": Entry(**line["entry"])})) for line in data["attacks"]],
        matrix=[[None if cell is None else Cell(**cell) for cell in row] for row in data["matrix"]],
    )
