"""The overview and the matrix: the round asked for (or the latest) and its boards, as plain data.

The HTML pages and the JSON API render the same dictionaries, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort
from sqlalchemy.orm import Session

from arena.store import Round
from leaderboard.caching import Page, public, state
from leaderboard.lookup import database, standings, summary
from leaderboard.upcoming import progress, time_left, upcoming
from leaderboard.visibility import rounds, sees_everything, shows_results

#: seconds between reloads of a page showing a running round
REFRESH_SECONDS = 5
#: what a matrix cell can show, each a share in [0, 1]
METRICS = ("robust_accuracy", "success_rate", "target_hit_rate")
#: the columns each ranking may be sorted by (``?dsort=`` and ``?asort=``, ``-`` first for descending)
SORTS = {
    "defenses": ("rank", "worst_case_robust_accuracy", "clean_accuracy", "mean_robust_accuracy", "attacks", "failed"),
    "attacks": (
        "rank", "mean_success_rate", "unique_breaks", "mean_l0", "mean_l2", "mean_linf", "mean_queries_per_sample",
        "defenses", "failed",
    ),
}  # fmt: skip


def overview(args: Mapping[str, str]) -> Page:
    """The rounds, the chosen round (``args["round"]``, else the newest the viewer may see scored), how
    many of its matches are done, both rankings of each of its tracks and threats (``withheld``: not
    for this viewer before publication), and the round in play above it (``upcoming``). ``args["q"]`` keeps
    the lines whose team or plugin contains it; ``args["dsort"]`` and ``args["asort"]`` sort the rankings by
    a column of :data:`SORTS` (ranks stay those of the whole board)."""
    q, dsort, asort = (args.get("q") or "").strip(), args.get("dsort") or "rank", args.get("asort") or "rank"
    for how, table in ((dsort, "defenses"), (asort, "attacks")):
        if how.lstrip("-") not in SORTS[table]:
            abort(400, f"{table} sort by one of {', '.join(SORTS[table])} (- first: descending), not {how!r}")
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        withheld = chosen is not None and not shows_results(chosen)
        scored = standings().of(session, chosen) if chosen and not withheld else None
        cells = progress(session, chosen.id) if chosen and withheld else scored.cells if scored else None
        in_play = public(("upcoming",), lambda: upcoming(session))
        left = playing(session, chosen)
    data = {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "cells": cells,
        "withheld": withheld,
        "boards": _arrange(scored.rankings(), q, dsort, asort) if scored and not withheld else [],
        "q": q,
        "dsort": dsort,
        "asort": asort,
        "upcoming": in_play,
        "instructor": sees_everything(),
    } | left
    return Page(data, state("overview", scored.serial if scored else None, data, "boards"))


def matrix(args: Mapping[str, str]) -> Page:
    """The attack-by-defense matrix of ``args["track"]`` and ``args["threat"]`` (by default the round's
    first board) in ``args["round"]`` (by default the latest), coloured by ``args["metric"]``."""
    track, threat = args.get("track") or None, args.get("threat") or None
    metric = args.get("metric", METRICS[0])
    if metric not in METRICS:
        abort(400, f"metric must be one of {', '.join(METRICS)}")
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        withheld = chosen is not None and not shows_results(chosen)
        scored = standings().of(session, chosen) if chosen and not withheld else None
        left = playing(session, chosen)
    boards = scored.boards if scored else []
    wanted = [i for i, b in enumerate(boards) if track in (None, b.track) and threat in (None, b.threat)]
    if (track or threat) and not wanted and not withheld:
        abort(404, f"no board for {track or 'any track'} / {threat or 'any threat'}")
    board = scored.as_dicts()[wanted[0]] if scored and wanted else None
    data = {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "withheld": withheld,
        "instructor": sees_everything(),
        "boards": [{"track": b.track, "threat": b.threat} for b in boards],
        "metric": metric,
        "metrics": list(METRICS),
        "track": board["track"] if board else None,
        "threat": board["threat"] if board else None,
        "attacks": [a["entry"] for a in board["attacks"]] if board else [],
        "defenses": [d["entry"] for d in board["defenses"]] if board else [],
        "cells": board["matrix"] if board else [],
    } | left
    return Page(data, state("matrix", scored.serial if scored else None, data, "attacks", "defenses", "cells"))


def playing(session: Session, round_: Round | None) -> dict[str, Any]:
    """While ``round_`` runs: the estimated seconds ``left`` and the page's ``refresh`` period (it reloads itself);
    else both None."""
    if round_ is None or round_.status != "running":
        return {"left": None, "refresh": None}
    return {"left": time_left(session, round_.id), "refresh": REFRESH_SECONDS}


def _arrange(boards: list[dict[str, Any]], q: str, dsort: str, asort: str) -> list[dict[str, Any]]:
    """The boards with only the lines matching ``q`` (team/plugin, any case), each ranking sorted as asked;
    a line without the figure sorts last."""
    needle = q.lower()

    def arranged(lines: list[dict[str, Any]], how: str) -> list[dict[str, Any]]:
        kept = [line for line in lines if needle in f"{line['entry']['team']}/{line['entry']['plugin']}".lower()]
        field, descending = how.lstrip("-"), how.startswith("-")
        present = sorted((x for x in kept if x[field] is not None), key=lambda x: x[field], reverse=descending)
        return present + [x for x in kept if x[field] is None]

    if not needle and dsort == asort == "rank":
        return boards
    return [b | {"defenses": arranged(b["defenses"], dsort), "attacks": arranged(b["attacks"], asort)} for b in boards]
