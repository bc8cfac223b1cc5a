"""The overview and the matrix: the round asked for (or the latest) and its boards, as plain data.

The HTML pages and the JSON API render the same dictionaries, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import abort

from leaderboard.caching import Page, state
from leaderboard.lookup import database, standings, summary
from leaderboard.upcoming import upcoming
from leaderboard.visibility import rounds, sees_everything, shows_results

#: what a matrix cell can show, each a share in [0, 1]
METRICS = ("robust_accuracy", "success_rate", "target_hit_rate")


def overview(args: Mapping[str, str]) -> Page:
    """The rounds, the chosen round (``args["round"]``, else the newest the viewer may see scored), how
    many of its matches are done, both rankings of each of its tracks and threats (``withheld``: not
    for this viewer before publication), and the round in play above it (``upcoming``)."""
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        scored = standings().of(session, chosen) if chosen else None
        withheld = chosen is not None and not shows_results(chosen)
        in_play = upcoming(session)
    data = {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "cells": scored.cells if scored else None,
        "withheld": withheld,
        "boards": scored.rankings() if scored and not withheld else [],
        "upcoming": in_play,
        "instructor": sees_everything(),
    }
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
        scored = standings().of(session, chosen) if chosen else None
        withheld = chosen is not None and not shows_results(chosen)
    boards = scored.boards if scored and not withheld else []
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
    }
    return Page(data, state("matrix", scored.serial if scored else None, data, "attacks", "defenses", "cells"))
