"""The local executor: a round's queued jobs in dependency order, in this process (and its sandboxes).

It runs every job through :func:`arena.execution.jobs.execute`, as Celery workers do; the database holds
the jobs' states either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from tqdm import tqdm

from arena.config import Settings
from arena.execution import jobs
from arena.execution.rounds import finish_round, local_worker, take_back
from arena.execution.state import WorkerState
from arena.planner import JOB_ORDER
from arena.store import Database, Job
from arena.tracks import Track

log = logging.getLogger(__name__)


def run_local(
    db: Database, settings: Settings, tracks: dict[str, Track], round_id: int | None, progress: bool = True
) -> Counter[str]:
    """Run every queued job (of ``round_id``, or without a round when None); return states by count.

    Jobs of the round that a killed local executor left ``running`` are taken back first
    (:func:`take_back`): running it again resumes an interrupted round.
    """
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(WorkerState())  # closed when the round ends: its warm processes too
        if round_id is not None:
            stack.enter_context(_round_lock(settings.home, round_id))
            take_back(db, round_id)
        return _run_queued(db, settings, state, tracks, round_id, progress)


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
    db: Database, settings: Settings, state: WorkerState, tracks: dict[str, Track], round_id: int | None, progress: bool
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
        states[_execute_locally(db, settings, state, job_id, tracks)] += 1
    if round_id is not None:
        finish_round(db, round_id)
    return states


def _execute_locally(
    db: Database, settings: Settings, state: WorkerState, job_id: int, tracks: dict[str, Track]
) -> str:
    """Run a job in-process; an error of the arena is tried again until the job's attempts run out."""
    while True:
        try:
            return jobs.execute(db, settings, job_id, tracks, state, worker=local_worker())
        except Exception as exc:  # stored with the job by execute, which fails it at its last attempt
            log.warning("job %d: %s; trying again", job_id, exc)
