"""What every page looks up: the app's database and standings, rounds by number, rows by id (404 if absent)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, current_app
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.store import Base, Database, Job, Plugin, PluginVersion, Result, Round, Team
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


def data_state(session: Session) -> tuple[Any, ...]:
    """A fingerprint of what the board shows beyond a round's standings: it changes when a result, a job, a
    failure, a plugin version, a verdict, a withdrawal, a sync, a round or a publication is written."""
    stamps = (
        select(func.max(Result.id)),
        select(func.max(Job.id)),
        select(func.count()).select_from(Job).where(Job.state == "failed"),
        select(func.max(PluginVersion.id)),
        select(func.max(PluginVersion.evaluated_at)),
        select(func.count()).select_from(PluginVersion).where(PluginVersion.valid.is_(True)),
        select(func.max(Plugin.withdrawn_at)),
        select(func.count()).select_from(Plugin).where(Plugin.withdrawn_at.is_not(None)),
        select(func.max(Team.id)),
        select(func.max(Team.synced_at)),
        select(func.max(Round.id)),
        select(func.max(Round.finished_at)),
        select(func.max(Round.published_at)),
        select(func.count()).select_from(Round).where(Round.status == "open"),
        select(func.count()).select_from(Round).where(Round.status == "done"),
        select(func.count()).select_from(Round).where(Round.published.is_(True)),
    )
    return tuple(session.execute(select(*(stamp.scalar_subquery() for stamp in stamps))).one())


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
