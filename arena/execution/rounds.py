"""A round's state in the database: whether it is done, which rounds are unfinished, what a lost local run left.

Every executor (local, Celery workers and their dispatcher) records a round's progress here.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

from sqlalchemy import select

from arena.execution import jobs
from arena.rules.tracks import Track
from arena.store import Database, Job, Round, RoundMatch, TrackRow


def local_worker() -> str:
    """The name the local executor runs jobs under: this host and process."""
    return f"local@{socket.gethostname()}:{os.getpid()}"


def take_back(db: Database, round_id: int) -> list[int]:
    """Put back in the queue the round's jobs left ``running`` by a local executor of this host; return their
    ids. Called under the round's lock (:func:`run_local`), so that executor is gone (killed, interrupted,
    rebooted). A Celery worker's jobs are left to the dispatcher's leases (:mod:`arena.execution.dispatch`)."""
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


def finish_round(db: Database, round_id: int) -> bool:
    """Mark a round done once no job it waits for is open; return whether it is done.

    While the round has open jobs of its own (nearly always, when a job finishes), one indexed lookup says so.
    """
    with db.session() as session:
        own = select(Job.id).where(Job.round_id == round_id, Job.state.in_(("queued", "running"))).limit(1)
        if session.scalar(own) is not None:
            return False
    if blocking_rounds(db, round_id):
        return False
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_.status != "done":
            round_.status, round_.finished_at = "done", datetime.now(UTC)
    return True


def blocking_rounds(db: Database, round_id: int) -> set[int | None]:
    """The rounds with open jobs that ``round_id`` waits for: its own, and those of other rounds that
    will write results its matrix needs (the planner leaves a job that is pending elsewhere to that round)."""
    with db.session() as session:
        cells = select(RoundMatch.result_key).where(RoundMatch.round_id == round_id)
        mine = (Job.round_id == round_id) | Job.key.in_(cells)
        return set(session.scalars(select(Job.round_id).where(mine, Job.state.in_(("queued", "running"))).distinct()))
