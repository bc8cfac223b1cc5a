"""Where a plugin stands: per board, its rank and score in the newest round it played, the change since the
round before, and for a defense its clean, worst-case and mean robust accuracy and its weakest cells.

Only rounds whose scores the viewer sees count (:mod:`leaderboard.visibility`): a rank in an unpublished
round would tell others' scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.results.boards import AttackStanding, Board, DefenseStanding
from arena.store import Round
from leaderboard.lookup import standings
from leaderboard.visibility import shows_results

#: the weakest cells a defense's standing lists per board
WEAKEST = 3

Line = DefenseStanding | AttackStanding


def plugin_standing(session: Session, plugin_id: int, kind: str, numbers: Iterable[int]) -> list[dict[str, Any]]:
    """Per board the plugin played in the rounds ``numbers`` (those the viewer sees scored): its line in the
    newest of them, ``previous`` (its line in the one before, ``None`` if it is the first) and ``change``
    (of score and rank)."""
    rounds = session.scalars(select(Round).where(Round.number.in_(set(numbers))).order_by(Round.number)).all()
    played: dict[tuple[str, str], list[tuple[int, Board, int]]] = defaultdict(list)
    for round_ in rounds:
        if not shows_results(round_):
            continue
        for board in standings().of(session, round_).boards:
            lines: list[Line] = list(board.defenses if kind == "defense" else board.attacks)
            column = next((i for i, line in enumerate(lines) if line.entry.plugin_id == plugin_id), None)
            if column is not None and _faced(lines[column]):
                played[board.track, board.threat].append((round_.number, board, column))
    made = []
    for (track, threat), timeline in played.items():
        number, board, column = timeline[-1]
        now = _line(number, board, column, kind)
        before = _line(*timeline[-2][:3], kind) if len(timeline) > 1 else None
        change = None
        if before is not None:
            score = None if now["score"] is None or before["score"] is None else now["score"] - before["score"]
            change = {"score": score, "rank": before["rank"] - now["rank"]}  # positive: climbed
        made.append({"track": track, "threat": threat, **now, "previous": before, "change": change})
    return sorted(made, key=lambda s: (s["track"], s["threat"]))


def _faced(line: Line) -> bool:
    """Whether the plugin played an opponent on the board (an ok match)."""
    return (line.attacks if isinstance(line, DefenseStanding) else line.defenses) > 0


def _line(number: int, board: Board, column: int, kind: str) -> dict[str, Any]:
    """The plugin's line on ``board`` in round ``number``: rank of how many, score, and a defense's figures."""
    if kind == "defense":
        defense = board.defenses[column]
        cells = [(attack, row[column]) for attack, row in zip(board.attacks, board.matrix, strict=True)]
        ok = [(a, c) for a, c in cells if c is not None and c.status == "ok" and c.robust_accuracy is not None]
        ok.sort(key=lambda pair: (pair[1].robust_accuracy, pair[0].entry.label))
        return {
            "round": number,
            "rank": defense.rank,
            "of": len(board.defenses),
            "score": defense.worst_case_robust_accuracy,
            "clean_accuracy": defense.clean_accuracy,
            "mean_robust_accuracy": defense.mean_robust_accuracy,
            "below_floor": defense.below_floor,
            "disputed": defense.disputed,
            "weakest": [
                {"attack": a.entry.label, "robust_accuracy": c.robust_accuracy, "result_id": c.result_id}
                for a, c in ok[:WEAKEST]
            ],
        }
    attack = board.attacks[column]
    return {
        "round": number,
        "rank": attack.rank,
        "of": len(board.attacks),
        "score": attack.mean_success_rate,
        "unique_breaks": attack.unique_breaks,
    }
