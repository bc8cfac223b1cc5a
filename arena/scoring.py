"""Rankings over a round's results, one board per track and threat.

Defenses rank by worst-case robust accuracy: a sample counts only if it survives every attack of the
round (aligned by position: all matches of a track share the evaluation samples). A defense below the
track's clean-accuracy floor is flagged and ranked below the others. Attacks rank by mean success rate,
then by unique breaks: (defense, sample) pairs that this attack broke and no other attack did. Failed
matches are counted but never scored; a cell whose result does not exist yet is pending.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from arena.hookspecs import THREATS
from arena.records import unpack
from arena.store import Plugin, PluginVersion, Result, Round, RoundMatch, Team, Track


@dataclass(frozen=True)
class Entry:
    """A plugin version as the board names it."""

    version_id: int
    team: str
    plugin: str
    version: str  # the first 12 characters of its content hash
    commit: str | None


@dataclass
class Cell:
    """One attack-defense pair of the matrix."""

    status: str  # ok | failed | pending (its result does not exist yet)
    result_key: str
    result_id: int | None = None
    robust_accuracy: float | None = None
    success_rate: float | None = None
    error: str | None = None


@dataclass
class DefenseStanding:
    """A defense's line in a board's ranking."""

    entry: Entry
    clean_accuracy: float | None
    worst_case_robust_accuracy: float | None
    mean_robust_accuracy: float | None
    attacks: int  # attacks faced (matches with an ok result)
    failed: int
    pending: int
    below_floor: bool


@dataclass
class AttackStanding:
    """An attack's line in a board's ranking."""

    entry: Entry
    mean_success_rate: float | None
    unique_breaks: int
    mean_l2: float | None
    mean_linf: float | None
    mean_queries_per_sample: float | None
    defenses: int  # defenses faced (matches with an ok result)
    failed: int
    pending: int


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


@dataclass
class _Outcome:
    """An ok result's metrics and its per-sample arrays, decoded once."""

    key: str
    metrics: dict[str, Any]
    index: np.ndarray
    clean_ok: np.ndarray  # clean correct and not rejected
    survived: np.ndarray


def latest_round(session: Session) -> Round | None:
    """The round with the highest number, or ``None`` before the first round."""
    return session.scalars(select(Round).order_by(Round.number.desc()).limit(1)).first()


def round_standings(
    session: Session, round_id: int, track: str | None = None, threat: str | None = None
) -> list[Board]:
    """One board per track and threat played in the round (tracks in the round's order), or only the
    boards of ``track`` and ``threat`` when given."""
    round_ = session.get(Round, round_id)
    if round_ is None:
        raise LookupError(f"no round with id {round_id}")
    wanted = [RoundMatch.round_id == round_id]
    wanted += [RoundMatch.track == track] if track is not None else []
    wanted += [RoundMatch.threat == threat] if threat is not None else []
    matches = session.scalars(select(RoundMatch).where(*wanted)).all()
    columns = (Result.id, Result.key, Result.status, Result.error, Result.metrics, Result.samples)
    rows = session.execute(select(*columns).join(RoundMatch, RoundMatch.result_key == Result.key).where(*wanted))
    results = {row.key: row for row in rows}
    entries = _entries(session, {m.attack_version_id for m in matches} | {m.defense_version_id for m in matches})
    tracks = {m.track for m in matches}
    floors = {
        name: config.get("clean_floor")
        for name, config in session.execute(select(Track.name, Track.config).where(Track.name.in_(tracks)))
    }
    groups: dict[tuple[str, str], list[RoundMatch]] = defaultdict(list)
    for match in matches:
        groups[match.track, match.threat].append(match)
    return [
        _board(group[0], group[1], floors.get(group[0]), groups[group], results, entries)
        for group in sorted(groups, key=_board_order(round_.tracks))
    ]


def _board_order(tracks: list[str]) -> Callable[[tuple[str, str]], tuple[int, str, int, str]]:
    """Sort key of (track, threat) groups: the round's track order, then the threats' order."""

    def key(group: tuple[str, str]) -> tuple[int, str, int, str]:
        track, threat = group
        track_order = tracks.index(track) if track in tracks else len(tracks)
        threat_order = THREATS.index(threat) if threat in THREATS else len(THREATS)
        return track_order, track, threat_order, threat

    return key


def played_boards(session: Session, round_id: int) -> list[tuple[str, str]]:
    """The (track, threat) pairs the round plays, in the order of :func:`round_standings`."""
    round_ = session.get(Round, round_id)
    if round_ is None:
        raise LookupError(f"no round with id {round_id}")
    query = select(RoundMatch.track, RoundMatch.threat).where(RoundMatch.round_id == round_id).distinct()
    return sorted(((track, threat) for track, threat in session.execute(query)), key=_board_order(round_.tracks))


def _entries(session: Session, version_ids: set[int]) -> dict[int, Entry]:
    query = (
        select(PluginVersion.id, PluginVersion.content_hash, PluginVersion.commit, Plugin.name, Team.name)
        .join(Plugin, PluginVersion.plugin_id == Plugin.id)
        .join(Team, Plugin.team_id == Team.id)
        .where(PluginVersion.id.in_(version_ids))
    )
    return {
        vid: Entry(vid, team, plugin, content_hash[:12], commit)
        for vid, content_hash, commit, plugin, team in session.execute(query)
    }


def _board(
    track: str,
    threat: str,
    floor: float | None,
    matches: list[RoundMatch],
    results: dict[str, Row[Any]],
    entries: dict[int, Entry],
) -> Board:
    cells = {
        (m.attack_version_id, m.defense_version_id): _cell(m.result_key, results.get(m.result_key)) for m in matches
    }
    outcomes = {pair: _outcome(results[cell.result_key]) for pair, cell in cells.items() if cell.status == "ok"}
    _check_aligned(list(outcomes.values()), track, threat)
    unique = _unique_breaks(outcomes)
    defenses = [
        _defense(entries[d], floor, {p: c for p, c in cells.items() if p[1] == d}, outcomes)
        for d in sorted({d for _, d in cells})
    ]
    attacks = [
        _attack(entries[a], unique.get(a, 0), {p: c for p, c in cells.items() if p[0] == a}, outcomes)
        for a in sorted({a for a, _ in cells})
    ]
    defenses.sort(key=lambda s: (s.below_floor, *_desc(s.worst_case_robust_accuracy), *_desc(s.clean_accuracy)))
    attacks.sort(key=lambda s: (*_desc(s.mean_success_rate), -s.unique_breaks))
    matrix = [[cells.get((a.entry.version_id, d.entry.version_id)) for d in defenses] for a in attacks]
    return Board(track, threat, floor, defenses, attacks, matrix)


def _defense(
    entry: Entry, floor: float | None, column: dict[tuple[int, int], Cell], outcomes: dict[tuple[int, int], _Outcome]
) -> DefenseStanding:
    ok = [outcomes[pair] for pair in column if pair in outcomes]
    clean = _mean(o.clean_ok.mean() for o in ok)
    worst = float(np.logical_and.reduce([o.survived for o in ok]).mean()) if ok else None
    return DefenseStanding(
        entry=entry,
        clean_accuracy=clean,
        worst_case_robust_accuracy=worst,
        mean_robust_accuracy=_mean(o.metrics.get("robust_accuracy") for o in ok),
        attacks=len(ok),
        failed=_count(column.values(), "failed"),
        pending=_count(column.values(), "pending"),
        below_floor=floor is not None and clean is not None and clean < floor,
    )


def _attack(
    entry: Entry, unique_breaks: int, row: dict[tuple[int, int], Cell], outcomes: dict[tuple[int, int], _Outcome]
) -> AttackStanding:
    ok = [outcomes[pair].metrics for pair in row if pair in outcomes]
    return AttackStanding(
        entry=entry,
        mean_success_rate=_mean(m.get("success_rate") for m in ok),
        unique_breaks=unique_breaks,
        mean_l2=_mean(m.get("mean_l2") for m in ok),
        mean_linf=_mean(m.get("mean_linf") for m in ok),
        mean_queries_per_sample=_mean(m.get("queries_per_sample") for m in ok),
        defenses=len(ok),
        failed=_count(row.values(), "failed"),
        pending=_count(row.values(), "pending"),
    )


def _unique_breaks(outcomes: dict[tuple[int, int], _Outcome]) -> dict[int, int]:
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
        _number(metrics.get("robust_accuracy")),
        _number(metrics.get("success_rate")),
        row.error,
    )


def _outcome(row: Row[Any]) -> _Outcome:
    if row.samples is None:
        raise ValueError(f"result {row.key} is ok but has no per-sample records")
    samples = unpack(row.samples)
    clean_ok = samples["clean_correct"].astype(bool) & ~samples["clean_rejected"].astype(bool)
    return _Outcome(row.key, row.metrics, samples["index"], clean_ok, samples["survived"].astype(bool))


def _check_aligned(outcomes: list[_Outcome], track: str, threat: str) -> None:
    for outcome in outcomes[1:]:
        if not np.array_equal(outcome.index, outcomes[0].index):
            raise ValueError(
                f"{track}/{threat}: result {outcome.key} was evaluated on other samples than {outcomes[0].key}"
            )


def _count(cells: Iterable[Cell], status: str) -> int:
    return sum(cell.status == status for cell in cells)


def _number(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [n for n in map(_number, values) if n is not None]
    return sum(numbers) / len(numbers) if numbers else None


def _desc(value: float | None) -> tuple[bool, float]:
    """Sort key part: larger values first, missing values last."""
    return value is None, -(value or 0.0)
