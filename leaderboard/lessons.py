"""The Lessons page: the course's claims beside the arena's figures of a round (see :mod:`arena.results.course`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import abort

from arena.results.course import PHYSICAL, lessons
from leaderboard.lookup import database, standings, summary
from leaderboard.visibility import rounds, sees_everything, shows_results


def lessons_page(args: Mapping[str, str]) -> dict[str, Any]:
    """The lessons of ``args["track"]`` (by default the round's first track with a photographed sibling, else
    its first) in ``args["round"]`` (by default the latest the viewer sees scored)."""
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        withheld = chosen is not None and not shows_results(chosen)
        boards = standings().of(session, chosen).boards if chosen and not withheld else []
    siblings = set(PHYSICAL.values())
    tracks = [t for t in dict.fromkeys(b.track for b in boards) if t not in siblings]
    track = args.get("track") or next((t for t in tracks if t in PHYSICAL), tracks[0] if tracks else None)
    if args.get("track") and track not in tracks and not withheld:
        abort(404, f"round {chosen.number if chosen else '-'} did not play track {track}")
    judged = lessons(boards, track) if track and not withheld else []
    return {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "withheld": withheld,
        "instructor": sees_everything(),
        "tracks": tracks,
        "track": track,
        "photographed": PHYSICAL.get(track or ""),
        "lessons": [lesson.as_dict() for lesson in judged],
    }
