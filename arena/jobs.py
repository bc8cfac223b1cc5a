"""Runs one job from the database and writes its output once: the same code for every executor.

A plugin's failure (exception, crash, time-out, malformed output) is the job's outcome, stored with
its reason and log tail. An error of the arena itself propagates, so the executor can retry it.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.config import Settings
from arena.match import MatchOutcome, MatchSpec, play
from arena.plugins import PluginSource
from arena.referee import REFEREE_VERSION
from arena.sandbox import PluginFailure
from arena.store import Artifact, Database, Job, PluginVersion, Result
from arena.store.db import insert_once
from arena.tracks import Track
from arena.training import TrainSpec, derive_seed, train_defense, train_substitute


def source_of(version: PluginVersion) -> PluginSource:
    """The plugin's code exactly as recorded with its version."""
    return PluginSource.from_archive(version.archive, version.source, version.commit)


def execute(db: Database, settings: Settings, job_id: int, tracks: dict[str, Track], worker: str = "") -> str:
    """Run job ``job_id`` unless its output exists; return its final state (done or failed)."""
    with db.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"no job with id {job_id}")
        if job.state in ("done", "failed"):
            return job.state
        job.state, job.attempts = "running", job.attempts + 1
        job.worker = worker or socket.gethostname()
        job.started_at = datetime.now(UTC)
        kind, key, params, depends = job.kind, job.key, dict(job.params), list(job.depends_on)
    track = tracks[params["track"]]
    state, error, log_tail = "done", None, None
    if kind == "match":
        state, error, log_tail = _run_match(db, settings, key, params, depends, track)
    else:
        try:
            _run_training(db, settings, kind, key, params, track)
        except PluginFailure as exc:
            state, error, log_tail = "failed", exc.reason, exc.log_tail
    with db.session() as session:
        job = session.get(Job, job_id)
        job.state, job.error, job.log_tail = state, error, log_tail
        job.finished_at = datetime.now(UTC)
    return state


def fail_job(db: Database, job_id: int, reason: str) -> None:
    """Fail a job without running it (its inputs could not be made); a match records why in its cell."""
    with db.session() as session:
        job = session.get(Job, job_id)
        job.state, job.error, job.finished_at = "failed", reason, datetime.now(UTC)
        if job.kind == "match":
            _store_result(session, job.key, job.params, MatchOutcome("failed", error=reason))


def _run_training(db: Database, settings: Settings, kind: str, key: str, params: dict, track: Track) -> None:
    data_dir = settings.data_dir
    if kind == "train-substitute":
        data, meta = train_substitute(track, data_dir)
        version_id = None
    else:
        with db.session() as session:
            version = session.get(PluginVersion, params["defense"])
            source, version_id = source_of(version), version.id
        role = "defense" if kind == "train-defense" else "twin"
        seed = derive_seed(settings.secret(), role, source.content_hash, track.name)
        spec = TrainSpec(source, track, seed, data_dir, settings.home / "plugin-cache")
        data, meta = train_defense(spec)
    with db.session() as session:
        insert_once(
            session,
            Artifact,
            key=key,
            kind=kind.removeprefix("train-"),
            plugin_version_id=version_id,
            track=track.name,
            data=data,
            meta=meta,
        )


def _run_match(
    db: Database, settings: Settings, key: str, params: dict, depends: list[str], track: Track
) -> tuple[str, str | None, str]:
    with db.session() as session:
        artifacts = session.scalars(select(Artifact).where(Artifact.key.in_(depends)))
        by_kind = {a.kind: a.data for a in artifacts}
        attack = session.get(PluginVersion, params["attack"])
        defense = session.get(PluginVersion, params["defense"])
        spec = MatchSpec(
            attack=source_of(attack),
            defense=source_of(defense),
            track=track,
            threat=params["threat"],
            seed=params["seed"],
            defense_artifact=by_kind["defense"],
            twin_artifact=by_kind.get("twin"),
            substitute_artifact=by_kind["substitute"],
            data_dir=settings.data_dir,
            cache_dir=settings.home / "plugin-cache",
            targeted=bool(attack.manifest.get("declared", {}).get("targeted")),
            randomized=bool(defense.manifest.get("declared", {}).get("randomized")),
        )
    outcome = play(spec)
    with db.session() as session:
        _store_result(session, key, params, outcome)
    return ("done" if outcome.status == "ok" else "failed"), outcome.error, outcome.log_tail


def _store_result(session: Session, key: str, params: dict, outcome: MatchOutcome) -> None:
    insert_once(
        session,
        Result,
        key=key,
        attack_version_id=params["attack"],
        defense_version_id=params["defense"],
        track=params["track"],
        threat=params["threat"],
        seed=params["seed"],
        referee_version=REFEREE_VERSION,
        status=outcome.status,
        error=outcome.error,
        log_tail=outcome.log_tail,
        metrics=outcome.metrics,
        samples=outcome.samples,
        gallery=outcome.gallery,
        wall_time=outcome.wall_time,
    )
