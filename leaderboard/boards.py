"""What the pages and the API show: the round asked for (or the latest) and its boards, as plain data.

The HTML pages and the JSON API render the same dictionaries, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort, current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.scoring import played_boards, round_standings
from arena.store import Database, Round

#: metrics a matrix cell can show
METRICS = ("robust_accuracy", "success_rate")


def database() -> Database:
    """The app's database handle."""
    return current_app.extensions["arena_db"]


def overview(args: Mapping[str, str]) -> dict[str, Any]:
    """The rounds, the chosen round (``args["round"]``, else the latest) and both rankings of each of its
    tracks and threats."""
    with database().session() as session:
        rounds, chosen = _rounds(session, args.get("round") or None)
        boards = round_standings(session, chosen.id) if chosen else []
    return {"rounds": rounds, "round": _summary(chosen), "boards": [board.as_dict() for board in boards]}


def matrix(args: Mapping[str, str]) -> dict[str, Any]:
    """The attack-by-defense matrix of ``args["track"]`` and ``args["threat"]`` (by default the round's
    first board) in ``args["round"]`` (by default the latest), coloured by ``args["metric"]``."""
    track, threat = args.get("track") or None, args.get("threat") or None
    metric = args.get("metric", METRICS[0])
    if metric not in METRICS:
        abort(400, f"metric must be one of {', '.join(METRICS)}")
    with database().session() as session:
        rounds, chosen = _rounds(session, args.get("round") or None)
        played = played_boards(session, chosen.id) if chosen else []
        wanted = [(t, h) for t, h in played if track in (None, t) and threat in (None, h)]
        if (track or threat) and not wanted:
            abort(404, f"no board for {track or 'any track'} / {threat or 'any threat'}")
        boards = round_standings(session, chosen.id, *wanted[0]) if wanted else []
    board = boards[0].as_dict() if boards else None
    return {
        "rounds": rounds,
        "round": _summary(chosen),
        "boards": [{"track": t, "threat": h} for t, h in played],
        "metric": metric,
        "track": board["track"] if board else None,
        "threat": board["threat"] if board else None,
        "attacks": [a["entry"] for a in board["attacks"]] if board else [],
        "defenses": [d["entry"] for d in board["defenses"]] if board else [],
        "cells": board["matrix"] if board else [],
    }


def _rounds(session: Session, number: str | None) -> tuple[list[int], Round | None]:
    """All round numbers (newest first) and the one asked for; 404 when it does not exist."""
    rounds = session.scalars(select(Round).order_by(Round.number.desc())).all()
    if number is None:
        return [r.number for r in rounds], rounds[0] if rounds else None
    chosen = next((r for r in rounds if str(r.number) == number), None)
    if chosen is None:
        abort(404, f"no round {number}")
    return [r.number for r in rounds], chosen


def _summary(round_: Round | None) -> dict[str, Any] | None:
    if round_ is None:
        return None
    return {
        "number": round_.number,
        "status": round_.status,
        "published": round_.published,
        "tracks": round_.tracks,
        "created_at": round_.created_at.isoformat(),
        "finished_at": round_.finished_at.isoformat() if round_.finished_at else None,
    }
