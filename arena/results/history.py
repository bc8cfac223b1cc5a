"""The history of the repeated game across rounds: each plugin's score over rounds, who broke whom, survival.

An attack *breaks* a defense when its success rate against it reaches :data:`BREAK_SUCCESS_RATE`; a defense
version survives the rounds it plays until the first round in which some attack breaks it, and the attacks that
broke it then are the "who broke whom" events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from arena.results.boards import Board, Cell, Entry

#: an attack breaks a defense when it fools it on at least this share of the samples it got right
BREAK_SUCCESS_RATE = 0.5


@dataclass
class Series:
    """One plugin's score on a board over rounds (whatever its version), ``None`` where it did not play."""

    label: str  # team/plugin
    team: str
    plugin_id: int
    values: list[float | None]


@dataclass
class BreakEvent:
    """An attack that broke a defense version in a round; ``first``: no attack had broken it in an earlier round."""

    round: int
    attack: Entry
    defense: Entry
    success_rate: float
    result_id: int | None
    first: bool = True


@dataclass
class Survival:
    """How long a defense version held: the rounds it played until an attack first broke it."""

    defense: Entry
    first_round: int
    last_round: int  # the last round it played
    rounds_played: int  # every round it played (with at least one ok match), broken or not
    rounds_survived: int  # rounds played before the one it was broken in (all of them if never broken)
    broken_in: int | None
    broken_by: list[Entry] = field(default_factory=list)

    @property
    def standing(self) -> bool:
        """Never broken so far."""
        return self.broken_in is None


@dataclass
class BoardHistory:
    """One track and threat across rounds: each plugin's score, who broke whom, how long defenses held.
    ``rounds`` lists the rounds that played this board; each series' values follow it."""

    track: str
    threat: str
    rounds: list[int]
    defenses: list[Series]  # worst-case robust accuracy
    attacks: list[Series]  # mean success rate
    breaks: list[BreakEvent]  # the first breaks of each defense version, newest first
    every_break: list[BreakEvent]  # every break in every round, newest first
    survival: list[Survival]  # standing defenses first, then the longest-lived

    def as_dict(self) -> dict[str, Any]:
        """The history as plain JSON-ready data."""
        data = asdict(self)
        for line, survival in zip(data["survival"], self.survival, strict=True):
            line["standing"] = survival.standing
        return data


def history(rounds: Sequence[tuple[int, Sequence[Board]]]) -> list[BoardHistory]:
    """The history of every board over ``rounds``: (round number, its boards) in the order played.
    Boards of the newest round come first, in its order."""
    played: dict[tuple[str, str], list[tuple[int, Board]]] = defaultdict(list)
    for number, boards in rounds:
        for board in boards:
            played[board.track, board.threat].append((number, board))
    newest_first = [(board.track, board.threat) for _, boards in reversed(rounds) for board in boards]
    order = {pair: newest_first.index(pair) for pair in played}
    return [_board_history(*pair, played[pair]) for pair in sorted(played, key=order.__getitem__)]


def _board_history(track: str, threat: str, timeline: list[tuple[int, Board]]) -> BoardHistory:
    numbers = [number for number, _ in timeline]
    defenses = _series(numbers, timeline, lambda b: [(d.entry, d.worst_case_robust_accuracy) for d in b.defenses])
    attacks = _series(numbers, timeline, lambda b: [(a.entry, a.mean_success_rate) for a in b.attacks])
    survival: dict[int, Survival] = {}
    breaks: list[BreakEvent] = []
    for number, board in timeline:
        for column, standing in enumerate(board.defenses):
            if not standing.attacks:
                continue  # no ok match yet: the defense has not played this round
            line = survival.get(standing.entry.version_id)
            if line is None:
                line = survival[standing.entry.version_id] = Survival(standing.entry, number, number, 0, 0, None)
            line.last_round, line.rounds_played = number, line.rounds_played + 1
            events = [
                BreakEvent(
                    number,
                    board.attacks[row].entry,
                    standing.entry,
                    cells[column].success_rate,
                    cells[column].result_id,
                    first=line.standing,
                )
                for row, cells in enumerate(board.matrix)
                if _breaks(cells[column])
            ]
            breaks += events
            if not line.standing:
                continue
            if events:
                line.broken_in, line.broken_by = number, [event.attack for event in events]
            else:
                line.rounds_survived += 1
    breaks.sort(key=lambda e: (-e.round, -e.success_rate, e.defense.label, e.attack.label))
    held = sorted(survival.values(), key=lambda s: (not s.standing, -s.rounds_survived, s.defense.label))
    return BoardHistory(track, threat, numbers, defenses, attacks, [e for e in breaks if e.first], breaks, held)


def _breaks(cell: Cell | None) -> bool:
    return (
        cell is not None
        and cell.status == "ok"
        and cell.success_rate is not None
        and cell.success_rate >= BREAK_SUCCESS_RATE
    )


def _series(
    numbers: list[int],
    timeline: list[tuple[int, Board]],
    scores: Callable[[Board], list[tuple[Entry, float | None]]],
) -> list[Series]:
    """One series per plugin (team/plugin, across its versions), values aligned to ``numbers``."""
    series: dict[int, Series] = {}
    for position, (_, board) in enumerate(timeline):
        for entry, score in scores(board):
            line = series.setdefault(
                entry.plugin_id, Series(entry.label, entry.team, entry.plugin_id, [None] * len(numbers))
            )
            line.values[position] = score
    return sorted(series.values(), key=lambda s: (s.values[-1] is None, -(s.values[-1] or 0.0), s.label))
