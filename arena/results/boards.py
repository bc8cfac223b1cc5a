"""A board of one track and threat, built from a round's cells and their per-sample outcomes (no database).

Defenses rank by worst-case robust accuracy: a sample counts only if it survives every attack of the round
(aligned by position: all matches of a track share the evaluation samples). A defense below the track's
clean-accuracy floor is flagged and ranked below the others. Attacks rank by mean success rate, then by unique
breaks: (defense, sample) pairs that this attack broke and no other attack did. Failed matches are counted but
never scored; a cell whose result does not exist yet is pending. :mod:`arena.results.scoring` reads what a board needs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Row

from arena.results.access import relative_paths


@dataclass(frozen=True)
class Entry:
    """A plugin version as the board names it."""

    version_id: int
    team: str
    plugin: str
    version: str  # the first 12 characters of its content hash
    commit: str | None
    plugin_id: int
    team_id: int

    @property
    def label(self) -> str:
        """``team/plugin``: the name a plugin keeps across its versions."""
        return f"{self.team}/{self.plugin}"


@dataclass
class Cell:
    """One attack-defense pair of the matrix."""

    status: str  # ok | failed | pending (its result does not exist yet)
    result_key: str
    result_id: int | None = None
    robust_accuracy: float | None = None
    success_rate: float | None = None
    target_hit_rate: float | None = None
    error: str | None = None
    #: a failed match's blame: "defense" (its code failed: the match counts against it), "disputed" (the defense's
    #: code failed in the attack's process only, and the attack failed when played apart), "arena" (an input the
    #: arena itself makes could not be made); no blame: the attack's failure
    blame: str | None = None
    violations: int = 0  # samples the referee had to project back into the budget
    disputed: bool = False  # played again with the defense apart (see arena.play.match), or disputed for good


@dataclass
class DefenseStanding:
    """A defense's line in a board's ranking."""

    entry: Entry
    clean_accuracy: float | None
    worst_case_robust_accuracy: float | None
    mean_robust_accuracy: float | None
    attacks: int  # attacks faced (matches with an ok result)
    failed: int
    forfeited: int  # failed matches its own code failed: each counts as every sample broken
    pending: int
    below_floor: bool
    draws: int | None  # the most draws any of its matches was evaluated with (randomized defenses: several)
    diagnostics: list[dict[str, str]] = field(default_factory=list)  # see arena.results.diagnostics
    disputed: int = 0  # matches played again with the defense apart, or disputed for good (see Cell.disputed)
    rank: int = 0  # shared by defenses equal on floor, worst-case and clean accuracy


@dataclass
class AttackStanding:
    """An attack's line in a board's ranking."""

    entry: Entry
    mean_success_rate: float | None
    unique_breaks: int
    mean_l0: float | None
    mean_l2: float | None
    mean_linf: float | None
    mean_queries_per_sample: float | None
    defenses: int  # defenses faced (matches with an ok result)
    failed: int  # its own failures (a failure of the defense's code is not the attack's)
    pending: int
    violations: int  # samples the referee had to project back into the budget, over its ok matches
    disputed: int = 0  # matches played again with the defense apart, or disputed for good (each scores 0)
    rank: int = 0  # shared by attacks equal on mean success and unique breaks


@dataclass
class Board:
    """Both rankings and the matrix of one track and threat; matrix rows follow ``attacks``, columns
    follow ``defenses`` (``None`` where the round has no such pair)."""

    track: str
    threat: str
    clean_floor: float | None
    defenses: list[DefenseStanding]
    attacks: list[AttackStanding]
    matrix: list[list[Cell | None]]

    def as_dict(self) -> dict[str, Any]:
        """The board as plain JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """An ok result's per-sample arrays, decoded once."""

    key: str
    samples: bytes  # digest of the evaluated samples' positions: equal digests, aligned arrays
    clean_ok: np.ndarray  # clean correct and not rejected
    survived: np.ndarray


def build_board(
    track: str,
    threat: str,
    floor: float | None,
    matches: list[Row[Any]],
    results: dict[str, Row[Any]],
    decoded: dict[str, Outcome],
    entries: dict[int, Entry],
) -> Board:
    cells = {
        (m.attack_version_id, m.defense_version_id): _cell(m.result_key, results.get(m.result_key)) for m in matches
    }
    ok = {pair: cell for pair, cell in cells.items() if cell.status == "ok"}
    outcomes = {pair: decoded[cell.result_key] for pair, cell in ok.items()}
    metrics = {pair: results[cell.result_key].metrics or {} for pair, cell in ok.items()}
    _check_aligned(list(outcomes.values()), track, threat)
    columns: dict[int, list[tuple[int, int]]] = defaultdict(list)
    rows: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for pair in cells:
        rows[pair[0]].append(pair)
        columns[pair[1]].append(pair)
    unique = _unique_breaks(outcomes)
    defenses = [
        _defense(entries[d], floor, [cells[p] for p in column], [p for p in column if p in ok], outcomes, metrics)
        for d, column in sorted(columns.items())
    ]
    attacks = [
        _attack(entries[a], unique.get(a, 0), [cells[p] for p in row], [metrics[p] for p in row if p in ok])
        for a, row in sorted(rows.items())
    ]
    _rank(defenses, lambda s: (s.below_floor, *_desc(s.worst_case_robust_accuracy), *_desc(s.clean_accuracy)))
    _rank(attacks, lambda s: (*_desc(s.mean_success_rate), -s.unique_breaks))
    matrix = [[cells.get((a.entry.version_id, d.entry.version_id)) for d in defenses] for a in attacks]
    return Board(track, threat, floor, defenses, attacks, matrix)


def _defense(
    entry: Entry,
    floor: float | None,
    column: list[Cell],
    ok: list[tuple[int, int]],
    outcomes: dict[tuple[int, int], Outcome],
    metrics: dict[tuple[int, int], dict[str, Any]],
) -> DefenseStanding:
    clean = _mean(outcomes[p].clean_ok.mean() for p in ok)
    forfeited = sum(cell.status == "failed" and cell.blame == "defense" for cell in column)
    worst = float(np.logical_and.reduce([outcomes[p].survived for p in ok]).mean()) if ok else None
    worst = 0.0 if forfeited else worst  # a defense cannot climb by making attacks fail
    draws = [int(metrics[p].get("draws") or 1) for p in ok]
    return DefenseStanding(
        entry=entry,
        clean_accuracy=clean,
        worst_case_robust_accuracy=worst,
        mean_robust_accuracy=_mean([*(metrics[p].get("robust_accuracy") for p in ok), *[0.0] * forfeited]),
        attacks=len(ok),
        failed=_count(column, "failed"),
        forfeited=forfeited,
        pending=_count(column, "pending"),
        below_floor=floor is not None and clean is not None and clean < floor,
        draws=max(draws) if draws else None,
        disputed=sum(cell.disputed for cell in column),
    )


def _attack(entry: Entry, unique_breaks: int, row: list[Cell], ok: list[dict[str, Any]]) -> AttackStanding:
    disputed = sum(cell.status == "failed" and cell.blame == "disputed" for cell in row)
    return AttackStanding(
        entry=entry,
        mean_success_rate=_mean([*(m.get("success_rate") for m in ok), *[0.0] * disputed]),
        unique_breaks=unique_breaks,
        mean_l0=_mean(m.get("mean_l0") for m in ok),
        mean_l2=_mean(m.get("mean_l2") for m in ok),
        mean_linf=_mean(m.get("mean_linf") for m in ok),
        mean_queries_per_sample=_mean(m.get("queries_per_sample") for m in ok),
        defenses=len(ok),
        failed=sum(cell.status == "failed" and cell.blame is None for cell in row),
        pending=_count(row, "pending"),
        violations=sum(int(m.get("violations") or 0) for m in ok),
        disputed=sum(cell.disputed for cell in row),
    )


def _unique_breaks(outcomes: dict[tuple[int, int], Outcome]) -> dict[int, int]:
    """Per attack: (defense, sample) pairs it broke (clean ok, not survived) that no other attack broke."""
    broken: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # defense -> attack -> mask
    for (a, d), outcome in outcomes.items():
        broken[d][a] = outcome.clean_ok & ~outcome.survived
    unique: dict[int, int] = defaultdict(int)
    for by_attack in broken.values():
        times_broken = np.sum(list(by_attack.values()), axis=0)
        for a, mask in by_attack.items():
            unique[a] += int(np.count_nonzero(mask & (times_broken == 1)))
    return unique


def _cell(key: str, row: Row[Any] | None) -> Cell:
    if row is None:
        return Cell("pending", key)
    metrics = row.metrics or {}
    return Cell(
        row.status,
        key,
        row.id,
        number(metrics.get("robust_accuracy")),
        number(metrics.get("success_rate")),
        number(metrics.get("target_hit_rate")),
        relative_paths(row.error),
        metrics.get("blame"),
        int(metrics.get("violations") or 0),
        metrics.get("blame") == "disputed" or bool(metrics.get("disputed")),
    )


def _check_aligned(outcomes: list[Outcome], track: str, threat: str) -> None:
    for outcome in outcomes[1:]:
        if outcome.samples != outcomes[0].samples:
            raise ValueError(
                f"{track}/{threat}: result {outcome.key} was evaluated on other samples than {outcomes[0].key}"
            )


def _count(cells: Iterable[Cell], status: str) -> int:
    return sum(cell.status == status for cell in cells)


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [n for n in map(number, values) if n is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _desc(value: float | None) -> tuple[bool, float]:
    """Sort key part: larger values first, missing values last (equal to 1e-9: float sums may differ in
    their last bits while the figures are the same)."""
    return value is None, -round(value or 0.0, 9)


def _rank(standings: list[Any], key: Callable[[Any], tuple]) -> None:
    """Sort ``standings`` by ``key`` and give each its ``rank``: equal keys share one (1, 2, 2, 4), and
    the order among them is their labels' (stated on the board, never a score)."""
    standings.sort(key=lambda s: (key(s), s.entry.label))
    for position, standing in enumerate(standings):
        previous = standings[position - 1] if position else None
        tied = previous is not None and key(previous) == key(standing)
        standing.rank = previous.rank if tied else position + 1
