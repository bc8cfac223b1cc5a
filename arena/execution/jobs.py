"""Runs one job from the database and writes its output once: the same code for every executor.

A plugin's failure (exception, crash, time-out, malformed output) is the job's outcome, stored with
its reason and log tail. An error of the arena itself is stored with the job and propagates, so the
executor can retry it; so is an attempt that never finished (its worker was lost). A job that has
started ``max_attempts`` times is failed for good with its last error: it never loops forever.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from arena.config import Settings
from arena.contract.plugins import describe_error
from arena.execution.inputs import source_of
from arena.execution.state import WorkerState
from arena.play.match import MatchOutcome, MatchSpec, play
from arena.play.training import TrainSpec, train_defense, train_substitute
from arena.results.access import relative_paths
from arena.rules.referee import REFEREE_VERSION
from arena.rules.seeds import derive_seed
from arena.rules.tracks import Track
from arena.sandbox import PluginFailure
from arena.store import Artifact, Database, Job, PluginVersion, Result
from arena.store.db import insert_once

#: how many times a job may start (an error of the arena, a lost worker) before it fails for good
MAX_ATTEMPTS = 3
#: how the reason of a job the arena itself failed to run starts (an error of the arena, not of a plugin)
GAVE_UP = "gave up after"
FINISHED = ("done", "failed")
#: the job kinds that train from a secret seed (derived from the arena's secret, see :func:`training_seed`)
SEEDED = {"train-defense": "defense", "train-twin": "twin"}


class UnknownJob(LookupError):
    """No job has this id (a message for another database, or one that outlived its job)."""


def training_seed(session: Session, settings: Settings, kind: str, params: dict) -> int | None:
    """The secret seed a job of ``kind`` and ``params`` trains with (None for a job that needs none).

    Only a process holding the arena's secret computes it; a worker receives it with the job.
    """
    role = SEEDED.get(kind)
    if role is None:
        return None
    content_hash = session.get(PluginVersion, params["defense"]).content_hash
    return derive_seed(settings.secret(), role, content_hash, params["track"])


# over 60 lines with its docstring: one job's claim, run and end, in the order a reader checks them
def execute(
    db: Database,
    settings: Settings,
    job_id: int,
    tracks: dict[str, Track],
    state: WorkerState,
    worker: str = "",
    seed: int | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Run job ``job_id`` unless it has finished; return its final state (done or failed).

    ``state`` is the worker's (its warm processes, its inputs read): consecutive matches of one attack (the
    planner orders a round's jobs by track, attack, defense, threat) share a warm attack process.

    ``seed`` is the training seed (:func:`training_seed`) when the caller has it; else it is derived
    here from the arena's secret. An error of the arena is stored with the job, which goes back to
    ``queued`` (and the error is raised) or, at its last attempt, fails.
    """
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise UnknownJob(f"no job with id {job_id} in {db.engine.url.render_as_string(hide_password=True)}")
        if job.state in FINISHED:
            return job.state
        if job.state == "running":  # claimed before, never finished: that attempt's process is gone
            job.error = f"attempt {job.attempts} was lost: its worker {job.worker} stopped before finishing"
        if job.attempts >= max_attempts:
            _fail(session, job, f"{GAVE_UP} {job.attempts} attempt(s); the last: {job.error}")
            return "failed"
        job.state, job.attempts, job.error = "running", job.attempts + 1, None
        job.worker = worker or socket.gethostname()
        job.started_at, job.finished_at = datetime.now(UTC), None
        kind, key, params, depends = job.kind, job.key, dict(job.params), list(job.depends_on)
        round_id = job.round_id
        if seed is None and kind in SEEDED:
            seed = training_seed(session, settings, kind, params)
    result, error, log_tail = "done", None, None
    try:
        track = tracks[params["track"]]
        if kind == "match":
            outcome = _run_match(db, settings, state, params, depends, track, round_id)
            write = functools.partial(_store_result, key=key, params=params, outcome=outcome)
            if outcome.status != "ok":
                result, error, log_tail = "failed", outcome.error, outcome.log_tail
        else:
            try:
                write, log_tail = _run_training(db, settings, kind, key, params, track, seed)
            except PluginFailure as exc:
                write = None
                result, error, log_tail = "failed", exc.reason, exc.log_tail
        with db.session() as session:  # the output and the job's end in one transaction
            if write is not None:
                write(session)
            ended = {"state": result, "error": error, "log_tail": log_tail, "finished_at": datetime.now(UTC)}
            session.execute(update(Job).where(Job.id == job_id).values(**ended))
    except Exception as exc:  # the arena's own error: stored, then retried or failed for good
        if _record_error(db, job_id, describe_error(exc), max_attempts) == "failed":
            return "failed"
        raise
    return result


def missing_inputs(session: Session, depends: list[str]) -> tuple[list[str], list[str]]:
    """The keys of ``depends`` with no artifact yet, and why those that failed to be made failed."""
    return missing_inputs_of(session, [depends])[0]


def missing_inputs_of(session: Session, depends: list[list[str]]) -> list[tuple[list[str], list[str]]]:
    """:func:`missing_inputs` of many jobs at once, in two queries however many jobs there are."""
    keys = {key for keys in depends for key in keys}
    present = set(session.scalars(select(Artifact.key).where(Artifact.key.in_(keys)))) if keys else set()
    why: dict[str, set[str]] = {key: set() for key in keys - present}
    if why:
        failed = session.execute(select(Job.key, Job.kind, Job.error).where(Job.key.in_(why), Job.state == "failed"))
        for key, kind, error in failed:
            why[key].add(f"{kind} failed: {error}")
    absent = [[key for key in job_keys if key in why] for job_keys in depends]
    return [(keys, sorted(set().union(*(why[key] for key in keys)))) for keys in absent]


def fail_job(db: Database, job_id: int, reason: str) -> None:
    """Fail a job without running it (its inputs could not be made); a match records why in its cell,
    and which of its inputs were missing (a replanned input replays it, see ``arena.plan.planner``)."""
    with db.session() as session:
        _fail(session, session.get(Job, job_id), reason)


def requeue(db: Database, job_id: int, attempts: int, reason: str) -> bool:
    """Put a running job whose worker was lost back in the queue, with why; False if it moved on meanwhile.

    ``attempts`` is the count seen when the loss was noticed: a job claimed again since is left alone.
    """
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state != "running" or job.attempts != attempts:
            return False
        job.state, job.error = "queued", reason
        return True


def _fail(session: Session, job: Job, reason: str) -> None:
    job.state, job.error, job.finished_at = "failed", reason, datetime.now(UTC)
    if job.kind == "match":
        absent, _ = missing_inputs(session, job.depends_on)
        outcome = _unplayed(session, absent, reason) if absent else MatchOutcome("failed", error=reason)
        _store_result(session, job.key, job.params, outcome, absent or None)


def _unplayed(session: Session, absent: list[str], reason: str) -> MatchOutcome:
    """A match that could not be played for want of ``absent`` inputs: never the attack's failure. When the
    defense's own code could not train (its model or its twin), the match counts against the defense; when
    the arena could not make an input (the substitute, a training it gave up on), against neither side."""
    failed = session.execute(select(Job.kind, Job.error).where(Job.key.in_(absent), Job.state == "failed")).all()
    defense = [error for kind, error in failed if kind in SEEDED and not (error or "").startswith(GAVE_UP)]
    if defense:
        error = f"the defense could not be trained, so the match counts against it: {relative_paths(defense[0])}"
        return MatchOutcome("failed", {"blame": "defense"}, error=error)
    return MatchOutcome("failed", {"blame": "arena"}, error=f"not played: {relative_paths(reason)}")


def _record_error(db: Database, job_id: int, error: str, max_attempts: int) -> str:
    """Store an attempt's error: back to ``queued`` while attempts remain, else failed; return the state."""
    with db.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job.attempts >= max_attempts:
            _fail(session, job, f"{GAVE_UP} {job.attempts} attempt(s); the last: {error}")
        else:
            job.state, job.error = "queued", f"attempt {job.attempts} failed: {error}"
        return job.state


def _run_training(
    db: Database, settings: Settings, kind: str, key: str, params: dict, track: Track, seed: int | None
) -> tuple[Callable[[Session], None], str | None]:
    """Train; return what writes the artifact (in the transaction that ends the job) and what the defense printed
    (kept with the job, as a failed training's log is: the board shows it to the team only)."""
    data_dir = settings.data_dir
    if kind == "train-substitute":
        data, meta = train_substitute(track, data_dir)
        version_id = None
    else:
        assert seed is not None
        with db.session() as session:
            version = session.get(PluginVersion, params["defense"])
            source, version_id = source_of(version), version.id
        spec = TrainSpec(source, track, seed, data_dir, settings.home / "plugin-cache")
        data, meta = train_defense(spec)
    log_tail = meta.pop("log_tail", None)
    row = {"kind": kind.removeprefix("train-"), "plugin_version_id": version_id, "track": track.name}
    return functools.partial(insert_once, model=Artifact, key=key, data=data, meta=meta, **row), log_tail


def _run_match(
    db: Database,
    settings: Settings,
    state: WorkerState,
    params: dict,
    depends: list[str],
    track: Track,
    round_id: int | None,
) -> MatchOutcome:
    inputs = state.inputs(db)
    with db.session() as session:
        by_kind = inputs.artifacts(session, depends)
        if "evaluation" not in by_kind:
            raise ValueError("the match was planned without an evaluation set (before referee 2): plan the round again")
        attack, defense = inputs.plugin(session, params["attack"]), inputs.plugin(session, params["defense"])
    spec = MatchSpec(
        attack=attack.source,
        defense=defense.source,
        track=track,
        threat=params["threat"],
        seed=params["seed"],
        defense_artifact=by_kind["defense"],
        twin_artifact=by_kind.get("twin"),
        substitute_artifact=by_kind["substitute"],
        evaluation=by_kind["evaluation"],
        data_dir=settings.data_dir,
        cache_dir=settings.home / "plugin-cache",
        targeted=bool(attack.declared.get("targeted")),
        randomized=bool(defense.declared.get("randomized")),
    )
    return play(spec, state.warm, scope=round_id)  # warm processes never outlive their round's matches


def _store_result(
    session: Session, key: str, params: dict, outcome: MatchOutcome, absent: list[str] | None = None
) -> None:
    """Store a match's outcome under its key; a replay's params name its content key and attempt."""
    insert_once(
        session,
        Result,
        key=key,
        content_key=params.get("content_key", key),
        attempt=params.get("attempt", 0),
        missing_inputs=absent,
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
