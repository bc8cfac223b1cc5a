"""Executors run a round's queued jobs in dependency order: in-process (local) or on Celery workers.

Both run every job through :func:`arena.jobs.execute`; the database holds the jobs' states either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from tqdm import tqdm

from arena import jobs
from arena.config import Settings
from arena.planner import JOB_ORDER
from arena.store import Database, Job, Round, RoundMatch
from arena.store import Track as TrackRow
from arena.tracks import Track

log = logging.getLogger(__name__)

#: seconds between two sweeps while following a distributed round
FOLLOW_INTERVAL = 2.0


def local_worker() -> str:
    """The name the local executor runs jobs under: this host and process."""
    return f"local@{socket.gethostname()}:{os.getpid()}"


def take_back(db: Database, round_id: int) -> list[int]:
    """Put back in the queue the round's jobs left ``running`` by a local executor of this host; return their
    ids. Called under the round's lock (:func:`run_local`), so that executor is gone (killed, interrupted,
    rebooted). A Celery worker's jobs are left to the dispatcher's leases (:mod:`arena.dispatch`)."""
    prefix = f"local@{socket.gethostname()}:"
    with db.session() as session:
        query = select(Job.id, Job.attempts, Job.worker).where(Job.round_id == round_id, Job.state == "running")
        running = session.execute(query).all()
    taken = []
    for job_id, attempts, worker in running:
        reason = f"attempt {attempts} was lost: its process ({worker}) stopped before finishing"
        if worker and worker.startswith(prefix) and jobs.requeue(db, job_id, attempts, reason):
            taken.append(job_id)
    return taken


def unfinished_rounds(db: Database) -> list[tuple[int, int]]:
    """The rounds planned but not done, oldest first, as ``(id, number)``."""
    with db.session() as session:
        query = select(Round.id, Round.number).where(Round.status == "running").order_by(Round.number)
        return [(round_id, number) for round_id, number in session.execute(query)]


def recorded_tracks(db: Database) -> dict[str, Track]:
    """The tracks as the rounds recorded them (an instructor's ``tracks.toml`` may live on another machine)."""
    with db.session() as session:
        return {row.name: Track(**row.config) for row in session.scalars(select(TrackRow))}


def run_local(
    db: Database, settings: Settings, tracks: dict[str, Track], round_id: int | None, progress: bool = True
) -> Counter[str]:
    """Run every queued job (of ``round_id``, or without a round when None); return states by count.

    Jobs of the round that a killed local executor left ``running`` are taken back first
    (:func:`take_back`): running it again resumes an interrupted round.
    """
    with contextlib.ExitStack() as stack:
        stack.callback(jobs.ATTACKS.close)
        if round_id is not None:
            stack.enter_context(_round_lock(settings.home, round_id))
            take_back(db, round_id)
        return _run_queued(db, settings, tracks, round_id, progress)


class RoundBusy(RuntimeError):
    """Another local executor of this home runs the round now."""


@contextlib.contextmanager
def _round_lock(home: Path, round_id: int) -> Iterator[None]:
    """Hold the round's lock file in ``home`` while it runs (the system drops it when the process dies)."""
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"round-{round_id}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RoundBusy(f"another process of this arena runs round id {round_id} now") from None
        yield


def _run_queued(
    db: Database, settings: Settings, tracks: dict[str, Track], round_id: int | None, progress: bool
) -> Counter[str]:
    with db.session() as session:
        in_round = Job.round_id.is_(None) if round_id is None else Job.round_id == round_id
        queued = session.scalars(select(Job).where(in_round, Job.state == "queued"))
        todo = sorted((JOB_ORDER.index(j.kind), j.id, j.kind, list(j.depends_on)) for j in queued)
    states: Counter[str] = Counter()
    bar = tqdm(todo, desc="jobs", unit="job", disable=not progress, leave=False)
    for _, job_id, kind, depends in bar:
        bar.set_postfix_str(kind)
        with db.session() as session:
            absent, failed = jobs.missing_inputs(session, depends)
        if absent:
            reasons = "; ".join(failed) or f"{len(absent)} artifact(s) never made"
            jobs.fail_job(db, job_id, f"an input could not be made: {reasons}")
            states["failed"] += 1
            continue
        states[_execute_locally(db, settings, job_id, tracks)] += 1
    if round_id is not None:
        finish_round(db, round_id)
    return states


def _execute_locally(db: Database, settings: Settings, job_id: int, tracks: dict[str, Track]) -> str:
    """Run a job in-process; an error of the arena is tried again until the job's attempts run out."""
    while True:
        try:
            return jobs.execute(db, settings, job_id, tracks, worker=local_worker())
        except Exception as exc:  # stored with the job by execute, which fails it at its last attempt
            log.warning("job %d: %s; trying again", job_id, exc)


def run_celery(
    db: Database,
    settings: Settings,
    tracks: dict[str, Track],
    round_id: int,
    wait: bool = True,
    progress: bool = True,
    interval: float = FOLLOW_INTERVAL,
    timeout: float | None = None,
) -> Counter[str]:
    """Send the round's jobs to the Celery workers of ``ARENA_BROKER_URL``; return its jobs by state.

    With ``wait``, follow the round until it is done: every ``interval`` seconds, send the jobs that
    became ready and take back those of lost workers (:class:`arena.dispatch.Dispatcher`), in this
    round and in the rounds whose jobs it waits for. An unreachable broker or database is waited for;
    after ``timeout`` seconds, ``TimeoutError``.
    """
    from arena import dispatch, tasks  # distributed mode only: Celery and Redis are optional dependencies

    assert settings.broker_url is not None
    app, keys = tasks.create_app(settings.broker_url), dispatch.Keys(settings.broker_url)
    dispatcher = dispatch.Dispatcher(db, app, keys, settings)
    try:
        states = dispatcher.sweep(round_id, tracks)
        if not wait:
            return states
        bar = tqdm(total=sum(states.values()), desc="jobs", unit="job", disable=not progress, leave=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while blocking := _blocking_rounds(db, round_id):
            bar.n = states["done"] + states["failed"]
            bar.set_postfix(running=states["running"], failed=states["failed"], refresh=True)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"round {round_id} not done after {timeout:.0f} s: jobs {dict(states)}")
            time.sleep(interval)
            try:
                known = recorded_tracks(db) | tracks
                for other in blocking - {round_id, None}:  # jobs this round's matches wait for
                    dispatcher.sweep(other, known)
                states = dispatcher.sweep(round_id, known)
            except (*dispatch.BROKER_ERRORS, OperationalError) as exc:
                log.warning("round %d: cannot reach the broker or the database (%s); trying again", round_id, exc)
        bar.close()
        return states
    finally:
        app.close()
        keys.redis.close()


def finish_round(db: Database, round_id: int) -> bool:
    """Mark a round done once no job it waits for is open; return whether it is done.

    While the round has open jobs of its own (nearly always, when a job finishes), one indexed lookup says so.
    """
    with db.session() as session:
        own = select(Job.id).where(Job.round_id == round_id, Job.state.in_(("queued", "running"))).limit(1)
        if session.scalar(own) is not None:
            return False
    if _blocking_rounds(db, round_id):
        return False
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_.status != "done":
            round_.status, round_.finished_at = "done", datetime.now(UTC)
    return True


def _blocking_rounds(db: Database, round_id: int) -> set[int | None]:
    """The rounds with open jobs that ``round_id`` waits for: its own, and those of other rounds that
    will write results its matrix needs (the planner leaves a job that is pending elsewhere to that round)."""
    with db.session() as session:
        cells = select(RoundMatch.result_key).where(RoundMatch.round_id == round_id)
        mine = (Job.round_id == round_id) | Job.key.in_(cells)
        return set(session.scalars(select(Job.round_id).where(mine, Job.state.in_(("queued", "running"))).distinct()))
