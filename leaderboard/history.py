"""Rounds and history: each round's leaders, every plugin's score over rounds, who broke whom, survival."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort
from sqlalchemy.orm import Session

from arena.results.boards import Board
from arena.results.history import BREAK_SUCCESS_RATE
from arena.store import Round
from leaderboard.caching import Page, state
from leaderboard.lookup import database, standings, summary
from leaderboard.signin import team_name
from leaderboard.standings import Scored
from leaderboard.upcoming import progress
from leaderboard.visibility import rounds, sees_everything, shows_results

#: series a history chart draws: the best by their last score, and the signed-in team's (its table lists all)
TOP_SERIES = 8


def history(args: Mapping[str, str]) -> Page:
    """Every round (newest first) with its progress and leaders, and the history of one board:
    ``args["track"]`` and ``args["threat"]`` (by default the first board played), over the rounds whose
    scores the viewer sees (an unpublished round's line shows its progress only); ``args["breaks"] ==
    "all"`` lists every break of every round on the page, not only the first of each defense version."""
    track, threat = args.get("track") or None, args.get("threat") or None
    with database().session() as session:
        every, _ = rounds(session, None)
        shown = [round_ for round_ in every if shows_results(round_)]
        scored = {round_.id: standings().of(session, round_) for round_ in shown}
        lines = [_round_line(session, round_, scored.get(round_.id)) for round_ in every]
        boards = standings().history(session, list(reversed(shown)))
    wanted = [b for b in boards if track in (None, b["track"]) and threat in (None, b["threat"])]
    if (track or threat) and not wanted:
        abort(404, f"no history for {track or 'any track'} / {threat or 'any threat'}")
    data = {
        "rounds": lines,
        "instructor": sees_everything(),
        "boards": [{"track": b["track"], "threat": b["threat"]} for b in boards],
        "history": wanted[0] if wanted else None,
        "break_success_rate": BREAK_SUCCESS_RATE,
        "all_breaks": args.get("breaks") == "all",
        "top": TOP_SERIES,
        "own_team": team_name(),
    }
    serials = [s.serial for s in scored.values()]
    return Page(data, state("rounds", serials, data, "history") + (repr((track, threat)),))


def _round_line(session: Session, round_: Round, scored: Scored | None) -> dict[str, Any]:
    """A round's line: its progress, and its leaders where the viewer sees its scores (``scored``)."""
    if scored is None:  # withheld: counted without scoring it
        return summary(round_) | {"cells": progress(session, round_.id), "withheld": True, "leaders": []}
    leaders = [_leaders(board) for board in scored.boards]
    return summary(round_) | {"cells": scored.cells, "withheld": False, "leaders": leaders}


def _leaders(board: Board) -> dict[str, Any]:
    """The board's first defense and first attack, with their scores (``None`` before any result)."""
    defense = next((d for d in board.defenses if d.worst_case_robust_accuracy is not None), None)
    attack = next((a for a in board.attacks if a.mean_success_rate is not None), None)
    return {
        "track": board.track,
        "threat": board.threat,
        "defense": defense.entry.label if defense else None,
        "defense_plugin_id": defense.entry.plugin_id if defense else None,
        "worst_case_robust_accuracy": defense.worst_case_robust_accuracy if defense else None,
        "attack": attack.entry.label if attack else None,
        "attack_plugin_id": attack.entry.plugin_id if attack else None,
        "mean_success_rate": attack.mean_success_rate if attack else None,
    }
