"""Rankings over a round's results, one board per track and threat (:mod:`arena.results.boards`), read from the
database.

What a board needs is read here once (its cells, per-sample outcomes, entries, floors) and the board is built
there; the history across rounds is :mod:`arena.results.history`'s.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from arena.results.boards import Board, Entry, Outcome, build_board, number
from arena.results.diagnostics import BASELINE, Played, diagnose
from arena.rules.hookspecs import THREATS
from arena.store import Plugin, PluginVersion, Result, Round, RoundMatch, Team, TrackRow

#: the per-sample arrays scoring reads; the other records of a result stay compressed
_SAMPLE_FIELDS = ("index", "clean_correct", "clean_rejected", "survived")

#: result keys fetched per query when decoding per-sample records
_CHUNK = 500


class OutcomeCache:
    """Decoded per-sample outcomes of ok results by result key, safe to share between threads.

    A result is written once under its key and never changes, so an entry never goes stale; once
    ``capacity`` entries are held, the oldest go first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: dict[str, Outcome] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Iterable[str]) -> dict[str, Outcome]:
        """The cached outcomes among ``keys``."""
        with self._lock:
            return {key: self._entries[key] for key in keys if key in self._entries}

    def put_many(self, outcomes: Iterable[Outcome]) -> None:
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
        build_board(group[0], group[1], floors.get(group[0]), groups[group], results, decoded, entries)
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
            number((row.metrics or {}).get("success_rate")),
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


def _decode(session: Session, keys: list[str], cache: OutcomeCache | None) -> dict[str, Outcome]:
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


def _outcome(key: str, samples: bytes | None) -> Outcome:
    if samples is None:
        raise ValueError(f"result {key} is ok but has no per-sample records")
    with np.load(io.BytesIO(samples), allow_pickle=False) as npz:
        records = {name: npz[name] for name in _SAMPLE_FIELDS}
    clean_ok = records["clean_correct"].astype(bool) & ~records["clean_rejected"].astype(bool)
    index = np.ascontiguousarray(records["index"], dtype=np.int64)
    digest = hashlib.blake2b(index.tobytes(), digest_size=16).digest()
    return Outcome(key, digest, clean_ok, records["survived"].astype(bool))
