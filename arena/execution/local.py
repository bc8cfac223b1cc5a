"""The local executor: a round's queued jobs in dependency order, on this machine (and in its sandboxes).

It runs every job through :func:`arena.execution.jobs.execute`, as Celery workers do; the database holds
the jobs' states either way. One job at a time runs in this process; several (``--jobs``, ``ARENA_JOBS``, by
default :func:`arena.config.default_jobs`) run side by side, one per worker process of its own
(:mod:`arena.execution.pool`), each job handed out once the jobs making its inputs have ended.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from tqdm import tqdm

from arena.config import Settings
from arena.execution import pool
from arena.execution.rounds import finish_round, take_back
from arena.execution.state import WorkerState
from arena.plan.planner import JOB_ORDER
from arena.rules.tracks import Track
from arena.store import Database, Job


def run_local(
    db: Database,
    settings: Settings,
    tracks: dict[str, Track],
    round_id: int | None,
    progress: bool = True,
    workers: int | None = None,
) -> Counter[str]:
    """Run every queued job (of ``round_id``, or without a round when None), ``workers`` at a time (default:
    ``settings.jobs``); return states by count.

    Jobs of the round that a killed local executor left ``running`` are taken back first
    (:func:`take_back`): running it again resumes an interrupted round.
    """
    with contextlib.ExitStack() as stack:
        state = stack.enter_context(WorkerState())  # this process's; each worker process of a pool has its own
        if round_id is not None:
            stack.enter_context(_round_lock(settings.home, round_id))
            take_back(db, round_id)
        todo = _queued(db, round_id)
        count = min(workers or settings.jobs, len(todo))
        bar = tqdm(total=len(todo), desc="jobs", unit="job", disable=not progress, leave=False)
        with bar:
            if count > 1:
                states = pool.run(db, settings, tracks, todo, count, bar)
            else:
                states = _run_in_turn(db, settings, state, tracks, todo, bar)
        if round_id is not None:
            finish_round(db, round_id)
        return states


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


def _queued(db: Database, round_id: int | None) -> list[pool.Todo]:
    """The queued jobs (of ``round_id``, or of no round), in the order they run: trainings first, then the
    matches as the planner ordered them."""
    with db.session() as session:
        in_round = Job.round_id.is_(None) if round_id is None else Job.round_id == round_id
        queued = session.scalars(select(Job).where(in_round, Job.state == "queued"))
        rows = sorted((JOB_ORDER.index(j.kind), j.id, j.kind, j.key, list(j.depends_on)) for j in queued)
    return [pool.Todo(job_id, kind, key, depends) for _, job_id, kind, key, depends in rows]


def _run_in_turn(
    db: Database, settings: Settings, state: WorkerState, tracks: dict[str, Track], todo: list[pool.Todo], bar: tqdm
) -> Counter[str]:
    """Run the jobs one after the other in this process."""
    states: Counter[str] = Counter()
    for job in todo:
        bar.set_postfix_str(job.kind)
        failed = pool.fail_if_unmade(db, job)
        states[failed or pool.execute_here(db, settings, state, job.id, tracks)] += 1
        bar.update()
    return states
