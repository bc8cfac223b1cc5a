"""What every page looks up: the app's database and standings, rounds by number, rows by id (404 if absent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.store import Base, Database, Round
from leaderboard.standings import Standings, is_frozen

RowT = TypeVar("RowT", bound=Base)


def database() -> Database:
    """The app's database handle."""
    return current_app.extensions["arena_db"]


def standings() -> Standings:
    """The app's shared round standings."""
    return current_app.extensions["arena_standings"]


def rounds(
    session: Session, number: str | None, prefer: Callable[[Round], bool] | None = None
) -> tuple[list[Round], Round | None]:
    """All rounds (newest first) and the one numbered ``number``; when ``None``, the newest that ``prefer``
    accepts, else the newest. 404 when the round asked for does not exist."""
    every = list(session.scalars(select(Round).order_by(Round.number.desc())))
    if number is None:
        preferred = [r for r in every if prefer(r)] if prefer else []
        return every, (preferred or every or [None])[0]
    chosen = next((r for r in every if str(r.number) == number), None)
    if chosen is None:
        abort(404, f"no round {number}")
    return every, chosen


def get_or_404(session: Session, model: type[RowT], row_id: int, what: str) -> RowT:
    """The row of ``model`` with id ``row_id``; 404 naming ``what`` when there is none."""
    row = session.get(model, row_id)
    if row is None:
        abort(404, f"no {what} {row_id}")
    return row


def summary(round_: Round | None) -> dict[str, Any] | None:
    """A round as the pages name it: number, status, publication, tracks and times."""
    if round_ is None:
        return None
    return {
        "number": round_.number,
        "status": round_.status,
        "published": round_.published,
        "frozen": is_frozen(round_),
        "tracks": round_.tracks,
        "created_at": round_.created_at.isoformat(),
        "finished_at": round_.finished_at.isoformat() if round_.finished_at else None,
        "closes_at": round_.closes_at.isoformat() if round_.closes_at else None,
    }
