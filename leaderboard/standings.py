"""Round standings computed once per state of a round and shared by every request.

Scoring a round decodes the per-sample records of all its results, which is far too slow to repeat per
page view at class size (thousands of results). A frozen round (published and done: it never changes)
is scored once; any other round is scored again only when its fingerprint (:func:`round_token`:
status, newest result and round match, floors) changes, which is checked at most every few seconds.
Decoded records are kept by result key, so a new round decodes only the results it does not share
with earlier ones.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from arena.results import snapshots
from arena.results.boards import Board
from arena.results.history import history
from arena.results.scoring import OutcomeCache, round_standings, round_token
from arena.store import Round


def is_frozen(round_: Round) -> bool:
    """A published round that has finished never changes: its pages may be cached."""
    return round_.published and round_.status == "done"


@dataclass
class Scored:
    """A round's boards at one state, with their JSON-ready forms made once."""

    serial: int  # unique to this state of this round: what was made from it may be kept under it
    token: tuple[Any, ...]
    boards: list[Board]
    cells: dict[str, int]  # matrix cells by status, over all boards
    checked: float  # time.monotonic() when the token was last found current
    _dicts: list[dict[str, Any]] | None = field(default=None, repr=False)
    _rankings: list[dict[str, Any]] | None = field(default=None, repr=False)

    def as_dicts(self) -> list[dict[str, Any]]:
        """Every board as plain data (matrix included); made on first use."""
        if self._dicts is None:
            self._dicts = [board.as_dict() for board in self.boards]
        return self._dicts

    def rankings(self) -> list[dict[str, Any]]:
        """Every board as plain data without its matrix (the overview's data); made on first use."""
        if self._rankings is None:
            self._rankings = [{k: v for k, v in board.items() if k != "matrix"} for board in self.as_dicts()]
        return self._rankings


class Standings:
    """Scored rounds by round id, at most ``rounds`` of them, safe to share between threads.

    A round that may still change is checked against the database (its token) at most every
    ``refresh`` seconds: a busy board serves a running round's standings up to that much late.
    """

    def __init__(self, rounds: int = 32, refresh: float = 5.0) -> None:
        self.outcomes = OutcomeCache()
        self.capacity = rounds
        self.refresh = refresh
        self._scored: OrderedDict[int, Scored] = OrderedDict()
        self._lock = threading.Lock()
        self._scoring: dict[int, threading.Lock] = {}
        self._history: tuple[tuple[Any, ...], list[dict[str, Any]]] | None = None
        self._serials = itertools.count(1)

    def of(self, session: Session, round_: Round) -> Scored:
        """The round's boards as they stand now. One thread scores a round; meanwhile the others get its
        last standings if there are any, else wait for the new ones."""
        frozen = is_frozen(round_)
        scored = self._recent(round_.id, frozen)
        if scored is not None:
            return scored
        token = ("frozen",) if frozen else round_token(session, round_.id)
        scored = self._cached(round_.id, token)
        if scored is not None:
            return scored
        with self._lock:
            scoring = self._scoring.setdefault(round_.id, threading.Lock())
            stale = self._scored.get(round_.id)
        if not scoring.acquire(blocking=stale is None):
            return stale  # another thread is scoring the round's new state: serve the last one meanwhile
        try:
            scored = self._cached(round_.id, token)
            if scored is None:
                kept = snapshots.load(session, round_.id) if frozen else None  # scored at publication
                boards = kept if kept is not None else round_standings(session, round_.id, outcomes=self.outcomes)
                scored = Scored(next(self._serials), token, boards, _cell_counts(boards), time.monotonic())
                with self._lock:
                    self._scored[round_.id] = scored
                    while len(self._scored) > self.capacity:
                        self._scored.popitem(last=False)
        finally:
            scoring.release()
        return scored

    def history(self, session: Session, rounds: list[Round]) -> list[dict[str, Any]]:
        """The history of every board over ``rounds`` (oldest first) as plain data, made again only when
        one of the rounds changed."""
        scored = [self.of(session, round_) for round_ in rounds]
        key = tuple((round_.id, s.token) for round_, s in zip(rounds, scored, strict=True))
        with self._lock:
            if self._history is not None and self._history[0] == key:
                return self._history[1]
        made = [h.as_dict() for h in history([(r.number, s.boards) for r, s in zip(rounds, scored, strict=True)])]
        with self._lock:
            self._history = (key, made)
        return made

    def _recent(self, round_id: int, frozen: bool) -> Scored | None:
        """The scored round if it needs no check: frozen, or checked less than ``refresh`` seconds ago."""
        with self._lock:
            scored = self._scored.get(round_id)
            if scored is None or (scored.token == ("frozen",)) != frozen:
                return None
            if frozen or time.monotonic() - scored.checked < self.refresh:
                self._scored.move_to_end(round_id)
                return scored
            return None

    def _cached(self, round_id: int, token: tuple[Any, ...]) -> Scored | None:
        """The scored round if its token still matches (it is then checked as of now)."""
        with self._lock:
            scored = self._scored.get(round_id)
            if scored is None or scored.token != token:
                return None
            scored.checked = time.monotonic()
            self._scored.move_to_end(round_id)
            return scored


def _cell_counts(boards: list[Board]) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0, "pending": 0}
    for board in boards:
        for row in board.matrix:
            for cell in row:
                if cell is not None:
                    counts[cell.status] = counts.get(cell.status, 0) + 1
    return counts
