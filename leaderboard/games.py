"""The game page: a board of a round as a zero-sum game (value, equilibrium mixes, best responses), and its
value over the rounds (see :mod:`arena.results.game`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from flask import abort
from sqlalchemy import select

from arena.results.game import board_game
from arena.store import Round
from leaderboard.lookup import database, standings, summary
from leaderboard.visibility import rounds, sees_everything, shows_results


def game(args: Mapping[str, str]) -> dict[str, Any]:
    """The game of ``args["track"]`` and ``args["threat"]`` (by default the round's first board) in
    ``args["round"]`` (by default the latest the viewer sees scored), and the same board's value in every
    round that played it and whose scores the viewer sees."""
    track, threat = args.get("track") or None, args.get("threat") or None
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        withheld = chosen is not None and not shows_results(chosen)
        boards = standings().of(session, chosen).boards if chosen and not withheld else []
        wanted = [b for b in boards if track in (None, b.track) and threat in (None, b.threat)]
        if (track or threat) and not wanted and not withheld:
            abort(404, f"no board for {track or 'any track'} / {threat or 'any threat'}")
        board = wanted[0] if wanted else None
        values = []
        if board is not None:
            for round_ in session.scalars(select(Round).order_by(Round.number)):
                if not shows_results(round_):
                    continue
                same = [
                    b
                    for b in standings().of(session, round_).boards
                    if (b.track, b.threat) == (board.track, board.threat)
                ]
                if same:
                    played = board_game(same[0])
                    values.append({"round": round_.number, "value": played.value, "complete": played.complete})
    return {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "withheld": withheld,
        "instructor": sees_everything(),
        "boards": [{"track": b.track, "threat": b.threat} for b in boards],
        "game": asdict(board_game(board)) if board is not None else None,
        "values": values,
    }
