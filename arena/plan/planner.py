"""Rounds (open, close: freeze and plan, publish) and which jobs a round needs, and why.

Everything is keyed by content (:mod:`arena.plan.keys`): a job is written only when its output (an artifact or a
result) does not exist yet, so running the same round again plans zero jobs and changing one attack plans only
its row. A failed match is replayed, as a new attempt under a key of its own, when it never ran for want of an
input, or on request (``retry_failed``).

Planning reads what is stored once (:func:`read_stored`), decides in a pure function
(:func:`arena.plan.planning.decide`: the :class:`arena.plan.planning.Plan`, a value) and stores the plan in one writer
(:func:`write_plan`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.config import Settings
from arena.plan.keys import evaluation_key, secret_fingerprint
from arena.plan.planning import Latest, Pairing, Plan, Stored, decide, pairings
from arena.plan.versions import latest_valid_versions
from arena.results import snapshots
from arena.rules import evaluation
from arena.rules.evaluation import EVALUATION_VERSION
from arena.rules.tracks import Track
from arena.store import (
    Artifact,
    Database,
    Job,
    JobInput,
    PluginVersion,
    Result,
    Round,
    RoundEntry,
    RoundMatch,
    TrackRow,
)
from arena.store.db import insert_once

JOB_ORDER = ("train-substitute", "train-defense", "train-twin", "match")
#: content keys asked of the database per query
_CHUNK = 500


def store_evaluation(session: Session, settings: Settings, track: Track) -> str:
    """Build and store the evaluation set of ``track`` unless it is stored; return its key.

    Only the arena's process that holds the secret (and the data, and a private set) builds it; the
    workers read it from the database.
    """
    key = evaluation_key(track, secret_fingerprint(settings))
    if session.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key)):
        return key
    built = evaluation.build(track, settings.data_dir, settings.secret())
    meta = {"evaluation": track.evaluation, "images": len(built.y), "version": EVALUATION_VERSION}
    values = {"kind": "evaluation", "plugin_version_id": None, "track": track.name, "meta": meta}
    insert_once(session, Artifact, key=key, data=built.pack(track.levels), **values)
    return key


# --------------------------------------------------------------------------------------------------
# Rounds
# --------------------------------------------------------------------------------------------------


class RoundError(Exception):
    """A round cannot do what was asked (another is open, it is closed already, it has not finished)."""


def open_round(db: Database, tracks: list[Track], seed: int = 0, closes_at: datetime | None = None) -> int:
    """Open a round on ``tracks``; closing it (:func:`plan_round`) freezes the plugins and plans its jobs.

    At most one round is open at a time: pushes during it are validated and enter it when it closes.
    """
    now = datetime.now(UTC)
    if closes_at is not None and closes_at <= now:
        raise RoundError(f"the closing time {closes_at:%Y-%m-%d %H:%M} UTC has passed already")
    with db.session() as session:
        current = current_round(session)
        if current is not None:
            raise RoundError(f"round {current.number} is still open: close it first (arena round close)")
        for track in tracks:
            row = session.scalar(select(TrackRow).where(TrackRow.name == track.name))
            if row is None:
                session.add(TrackRow(name=track.name, config=track.config()))
            else:
                row.config = track.config()
        number = (session.scalar(select(func.max(Round.number))) or 0) + 1
        round_ = Round(number=number, seed=seed, tracks=[t.name for t in tracks], status="open", closes_at=closes_at)
        session.add(round_)
        session.flush()
        return round_.id


def current_round(session: Session) -> Round | None:
    """The open round, or None."""
    return session.scalars(select(Round).where(Round.status == "open").order_by(Round.number)).first()


def due_rounds(session: Session, now: datetime | None = None) -> list[Round]:
    """The open rounds whose scheduled closing time has come."""
    now = now or datetime.now(UTC)
    return list(session.scalars(select(Round).where(Round.status == "open", Round.closes_at <= now)))


def plan_round(
    db: Database,
    settings: Settings,
    round_id: int,
    tracks: dict[str, Track],
    retry_failed: bool = False,
    teams: set[str] | None = None,
) -> Plan:
    """Close an open round: freeze the latest valid version of every plugin, write the round's matrix
    and the jobs whose outputs do not exist yet (every other cell reuses its cached result).

    ``retry_failed`` replays the cells whose latest result failed (see :func:`plan_matches`); ``teams``
    keeps only those teams' plugins (``arena course`` plays the built-ins alone).
    """
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_ is None:
            raise LookupError(f"no round with id {round_id}")
        if round_.status != "open":
            raise RoundError(f"round {round_.number} is closed already ({round_.status})")
        unknown = [name for name in round_.tracks if name not in tracks]
        if unknown:
            raise RoundError(f"round {round_.number} plays track(s) {', '.join(unknown)}, unknown here")
        now = datetime.now(UTC)
        versions = latest_valid_versions(session)
        kept = [v for v in versions if teams is None or v.plugin.team.name in teams]
        round_.entries = [RoundEntry(plugin_version=v) for v in kept]
        round_.started_at = now
        attacks = [e.plugin_version for e in round_.entries if e.plugin_version.plugin.kind == "attack"]
        defenses = [e.plugin_version for e in round_.entries if e.plugin_version.plugin.kind == "defense"]
        plan = plan_matches(
            session, settings, attacks, defenses, [tracks[t] for t in round_.tracks], round_.seed, round_, retry_failed
        )
        round_.status, round_.finished_at = ("running", None) if plan.new_jobs else ("done", now)
        return plan


def publish_round(db: Database, round_id: int, while_running: bool = False) -> None:
    """Publish a finished round: the board then shows its scores to everyone, read from the standings kept
    here (:mod:`arena.results.snapshots`; publishing a published round again scores it anew). ``while_running`` (the
    demo's round) publishes a running round too: the board scores it live as its matches end, until it is
    published again once done."""
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_ is None:
            raise LookupError(f"no round with id {round_id}")
        if round_.status != "done" and not (while_running and round_.status == "running"):
            raise RoundError(f"round {round_.number} is {round_.status}: publish it once it is done")
        if round_.status == "done":
            snapshots.store(session, round_id)
        round_.published, round_.published_at = True, datetime.now(UTC)


def read_stored(session: Session, versions: list[PluginVersion], planned: list[Pairing]) -> Stored:
    """What the database holds that :func:`decide` reads for ``planned`` (``versions``: the round's plugins)."""
    pending = frozenset(session.scalars(select(Job.key).where(Job.state.in_(("queued", "running")))))
    failed = frozenset(session.scalars(select(Job.key).where(Job.state == "failed", Job.kind != "match")))
    ids = [v.id for v in versions]
    played = set(session.scalars(select(Result.attack_version_id).where(Result.attack_version_id.in_(ids))))
    played |= set(session.scalars(select(Result.defense_version_id).where(Result.defense_version_id.in_(ids))))
    trained = frozenset(session.scalars(select(Artifact.plugin_version_id).where(Artifact.plugin_version_id.in_(ids))))
    models = sorted({key for p in planned for key in (p.substitute, p.model, p.twin)})
    contents = sorted({content for p in planned for _, content in p.matches})
    artifacts: set[str] = set()
    latest: dict[str, Latest] = {}
    columns = (Result.content_key, Result.key, Result.attempt, Result.status, Result.missing_inputs)
    for start in range(0, max(len(models), len(contents)), _CHUNK):
        artifacts |= set(session.scalars(select(Artifact.key).where(Artifact.key.in_(models[start : start + _CHUNK]))))
        rows = session.execute(select(*columns).where(Result.content_key.in_(contents[start : start + _CHUNK])))
        for content, *attempt in rows:
            if content not in latest or attempt[1] > latest[content].attempt:
                latest[content] = Latest(*attempt)
    return Stored(pending, failed, frozenset(played), trained, frozenset(artifacts), latest)


def write_plan(session: Session, plan: Plan, round_: Round | None = None) -> None:
    """Store ``plan``: its new jobs (with their inputs, for the dispatcher's index) and ``round_``'s matrix."""
    for job in plan.jobs:
        inputs = [JobInput(key=key) for key in job.depends]
        session.add(
            Job(
                round_id=plan.round_id,
                kind=job.kind,
                key=job.key,
                params=job.params,
                depends_on=job.depends,
                inputs=inputs,
            )
        )
    if round_ is not None:
        for cell in plan.matrix:
            session.add(
                RoundMatch(
                    round=round_,
                    result_key=cell.result_key,
                    attack_version_id=cell.attack_version_id,
                    defense_version_id=cell.defense_version_id,
                    track=cell.track,
                    threat=cell.threat,
                )
            )
    session.flush()


def plan_matches(
    session: Session,
    settings: Settings,
    attacks: list[PluginVersion],
    defenses: list[PluginVersion],
    tracks: list[Track],
    seed: int,
    round_: Round | None = None,
    retry_failed: bool = False,
) -> Plan:
    """Plan every attack against every defense on ``tracks`` under each threat the attack plays, and store the
    plan (:func:`read_stored`, :func:`decide`, :func:`write_plan`); the tracks' evaluation sets are built first."""
    evaluations = {track.name: store_evaluation(session, settings, track) for track in tracks}
    planned = pairings(attacks, defenses, tracks, seed, evaluations, secret_fingerprint(settings))
    stored = read_stored(session, attacks + defenses, planned)
    plan = decide(stored, planned, seed, round_.id if round_ else None, retry_failed)
    write_plan(session, plan, round_)
    return plan
