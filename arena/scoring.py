"""Rankings over a round's results, one board per track and threat, and the history of the repeated game.

Defenses rank by worst-case robust accuracy: a sample counts only if it survives every attack of the
round (aligned by position: all matches of a track share the evaluation samples). A defense below the
track's clean-accuracy floor is flagged and ranked below the others. Attacks rank by mean success rate,
then by unique breaks: (defense, sample) pairs that this attack broke and no other attack did. Failed
matches are counted but never scored; a cell whose result does not exist yet is pending.

Across rounds (:func:`history`): an attack *breaks* a defense when its success rate against it reaches
:data:`BREAK_SUCCESS_RATE`; a defense version survives the rounds it plays until the first round in
which some attack breaks it, and the attacks that broke it then are the "who broke whom" events.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from arena.access import relative_paths
from arena.diagnostics import BASELINE, Played, diagnose
from arena.hookspecs import THREATS
from arena.store import Plugin, PluginVersion, Result, Round, RoundMatch, Team, TrackRow

#: an attack breaks a defense when it fools it on at least this share of the samples it got right
BREAK_SUCCESS_RATE = 0.5

#: the per-sample arrays scoring reads; the other records of a result stay compressed
_SAMPLE_FIELDS = ("index", "clean_correct", "clean_rejected", "survived")

#: result keys fetched per query when decoding per-sample records
_CHUNK = 500


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
    disputed: bool = False  # played again with the defense apart (see arena.match), or disputed for good


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
    diagnostics: list[dict[str, str]] = field(default_factory=list)  # see arena.diagnostics
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
class _Outcome:
    """An ok result's per-sample arrays, decoded once."""

    key: str
    samples: bytes  # digest of the evaluated samples' positions: equal digests, aligned arrays
    clean_ok: np.ndarray  # clean correct and not rejected
    survived: np.ndarray


class OutcomeCache:
    """Decoded per-sample outcomes of ok results by result key, safe to share between threads.

    A result is written once under its key and never changes, so an entry never goes stale; once
    ``capacity`` entries are held, the oldest go first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: dict[str, _Outcome] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Iterable[str]) -> dict[str, _Outcome]:
        """The cached outcomes among ``keys``."""
        with self._lock:
            return {key: self._entries[key] for key in keys if key in self._entries}

    def put_many(self, outcomes: Iterable[_Outcome]) -> None:
        """Remember ``outcomes``, forgetting the oldest entries beyond the capacity."""
        with self._lock:
            for outcome in outcomes:
                self._entries[outcome.key] = outcome
            while len(self._entries) > self.capacity:
                del self._entries[next(iter(self._entries))]


def latest_round(session: Session) -> Round | None:
    """The round with the highest number, or ``None`` before the first round."""
    return session.scalars(select(Round).order_by(Round.number.desc()).limit(1)).first()


def round_standings(
    session: Session,
    round_id: int,
    track: str | None = None,
    threat: str | None = None,
    outcomes: OutcomeCache | None = None,
) -> list[Board]:
    """One board per track and threat played in the round (tracks in the round's order), or only the
    boards of ``track`` and ``threat`` when given. ``outcomes`` keeps decoded per-sample records
    between calls (a new round decodes only the results it does not share with earlier ones)."""
    round_ = session.get(Round, round_id)
    if round_ is None:
        raise LookupError(f"no round with id {round_id}")
    wanted = [RoundMatch.round_id == round_id]
    wanted += [RoundMatch.track == track] if track is not None else []
    wanted += [RoundMatch.threat == threat] if threat is not None else []
    cells = (RoundMatch.attack_version_id, RoundMatch.defense_version_id, RoundMatch.track, RoundMatch.threat)
    matches = session.execute(select(*cells, RoundMatch.result_key).where(*wanted)).all()
    columns = (Result.id, Result.key, Result.status, Result.error, Result.metrics)
    rows = session.execute(select(*columns).join(RoundMatch, RoundMatch.result_key == Result.key).where(*wanted))
    results = {row.key: row for row in rows}
    decoded = _decode(session, [key for key, row in results.items() if row.status == "ok"], outcomes)
    entries = plugin_entries(session, {m.attack_version_id for m in matches} | {m.defense_version_id for m in matches})
    floors = _floors(session, {m.track for m in matches})
    groups: dict[tuple[str, str], list[Row[Any]]] = defaultdict(list)
    for match in matches:
        groups[match.track, match.threat].append(match)
    boards = [
        _board(group[0], group[1], floors.get(group[0]), groups[group], results, decoded, entries)
        for group in sorted(groups, key=_board_order(round_.tracks))
    ]
    flags = diagnose(_played(session, round_id, track), lambda version: _is_baseline(entries, version))
    for board in boards:
        for standing in board.defenses:
            standing.diagnostics = flags.get((standing.entry.version_id, board.track), [])
    return boards


def _played(session: Session, round_id: int, track: str | None) -> list[Played]:
    """The round's ok matches on ``track`` (every track when None), under every threat, for the diagnostics."""
    wanted = [RoundMatch.round_id == round_id, Result.status == "ok"]
    wanted += [RoundMatch.track == track] if track is not None else []
    columns = (RoundMatch.attack_version_id, RoundMatch.defense_version_id, RoundMatch.track, RoundMatch.threat)
    rows = session.execute(
        select(*columns, Result.metrics).join(Result, Result.key == RoundMatch.result_key).where(*wanted)
    ).all()
    entries = plugin_entries(session, {row.attack_version_id for row in rows})
    return [
        Played(
            row.track,
            row.threat,
            row.defense_version_id,
            entries[row.attack_version_id].team,
            entries[row.attack_version_id].plugin,
            _number((row.metrics or {}).get("success_rate")),
            row.metrics or {},
        )
        for row in rows
    ]


def _is_baseline(entries: dict[int, Entry], version_id: int) -> bool:
    entry = entries.get(version_id)
    return entry is not None and (entry.team, entry.plugin) == BASELINE


def round_token(session: Session, round_id: int) -> tuple[Any, ...]:
    """A cheap fingerprint of what the round's standings depend on: its status, the newest result and
    round match (both tables are only ever inserted into: results are written once under their key) and
    the tracks' floors. Equal tokens, equal standings; a new result anywhere changes the token."""
    status = session.scalar(select(Round.status).where(Round.id == round_id))
    newest = session.execute(select(select(func.max(Result.id)).scalar_subquery(), func.max(RoundMatch.id))).one()
    floors = sorted(
        (name, config.get("clean_floor")) for name, config in session.execute(select(TrackRow.name, TrackRow.config))
    )
    return (status, *newest, *floors)


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


def plugin_entries(session: Session, version_ids: set[int]) -> dict[int, Entry]:
    """The board's names of the plugin versions ``version_ids``."""
    query = (
        select(
            PluginVersion.id,
            PluginVersion.content_hash,
            PluginVersion.commit,
            Plugin.name,
            Plugin.id,
            Team.name,
            Team.id,
        )
        .join(Plugin, PluginVersion.plugin_id == Plugin.id)
        .join(Team, Plugin.team_id == Team.id)
        .where(PluginVersion.id.in_(version_ids))
    )
    return {
        vid: Entry(vid, team, plugin, content_hash[:12], commit, plugin_id, team_id)
        for vid, content_hash, commit, plugin, plugin_id, team, team_id in session.execute(query)
    }


def _floors(session: Session, tracks: set[str]) -> dict[str, float | None]:
    query = select(TrackRow.name, TrackRow.config).where(TrackRow.name.in_(tracks))
    return {name: config.get("clean_floor") for name, config in session.execute(query)}


def _decode(session: Session, keys: list[str], cache: OutcomeCache | None) -> dict[str, _Outcome]:
    """The per-sample outcomes of the ok results ``keys``: from ``cache``, else read and decoded."""
    found = cache.get_many(keys) if cache is not None else {}
    missing = [key for key in keys if key not in found]
    decoded = []
    for start in range(0, len(missing), _CHUNK):
        query = select(Result.key, Result.samples).where(Result.key.in_(missing[start : start + _CHUNK]))
        decoded += [_outcome(key, samples) for key, samples in session.execute(query)]
    if cache is not None:
        cache.put_many(decoded)
    return found | {outcome.key: outcome for outcome in decoded}


def _outcome(key: str, samples: bytes | None) -> _Outcome:
    if samples is None:
        raise ValueError(f"result {key} is ok but has no per-sample records")
    with np.load(io.BytesIO(samples), allow_pickle=False) as npz:
        records = {name: npz[name] for name in _SAMPLE_FIELDS}
    clean_ok = records["clean_correct"].astype(bool) & ~records["clean_rejected"].astype(bool)
    index = np.ascontiguousarray(records["index"], dtype=np.int64)
    digest = hashlib.blake2b(index.tobytes(), digest_size=16).digest()
    return _Outcome(key, digest, clean_ok, records["survived"].astype(bool))


def _board(
    track: str,
    threat: str,
    floor: float | None,
    matches: list[Row[Any]],
    results: dict[str, Row[Any]],
    decoded: dict[str, _Outcome],
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
    outcomes: dict[tuple[int, int], _Outcome],
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
        _number(metrics.get("target_hit_rate")),
        relative_paths(row.error),
        metrics.get("blame"),
        int(metrics.get("violations") or 0),
        metrics.get("blame") == "disputed" or bool(metrics.get("disputed")),
    )


def _check_aligned(outcomes: list[_Outcome], track: str, threat: str) -> None:
    for outcome in outcomes[1:]:
        if outcome.samples != outcomes[0].samples:
            raise ValueError(
                f"{track}/{threat}: result {outcome.key} was evaluated on other samples than {outcomes[0].key}"
            )


def _count(cells: Iterable[Cell], status: str) -> int:
    return sum(cell.status == status for cell in cells)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [n for n in map(_number, values) if n is not None]
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


# --------------------------------------------------------------------------------------------------
# History: the repeated game across rounds
# --------------------------------------------------------------------------------------------------


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
