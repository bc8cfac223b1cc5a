"""Several jobs of a local run side by side: one worker process per slot, each running one job at a time.

The parent hands each job to an idle worker once every job making one of its inputs has ended (a match waits
for its defense's training, its twin's and the substitute), in the order of the run (the planner's: consecutive
matches of one attack share a worker's warm attack processes where they can). A worker that dies (killed,
out of memory) loses its job's attempt: the job is put back in the queue, as :func:`arena.execution.rounds.take_back`
does after a killed run, and played again by a fresh worker; :func:`arena.execution.jobs.execute` counts the
attempts, so a job that kills every worker fails for good. Each worker gets an equal share of the cores (its
torch and OpenMP threads) unless ``OMP_NUM_THREADS`` says otherwise; with the same threads per job the outputs are
those of one job at a time, bit for bit (another thread count adds floats in another order:
docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from sqlalchemy import select
from tqdm import tqdm

from arena.config import Settings
from arena.execution import jobs
from arena.execution.rounds import local_worker
from arena.execution.state import WorkerState
from arena.rules.tracks import Track
from arena.store import Database, Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Todo:
    """A queued job: its id, kind, key (a training's is its artifact's) and the keys of its inputs."""

    id: int
    kind: str
    key: str
    depends: list[str]


def execute_here(db: Database, settings: Settings, state: WorkerState, job_id: int, tracks: dict[str, Track]) -> str:
    """Run a job in this process; an error of the arena is tried again until the job's attempts run out."""
    while True:
        try:
            return jobs.execute(db, settings, job_id, tracks, state, worker=local_worker())
        except Exception as exc:  # stored with the job by execute, which fails it at its last attempt
            log.warning("job %d: %s; trying again", job_id, exc)


def fail_if_unmade(db: Database, job: Todo) -> str | None:
    """Fail ``job`` without running it when one of its inputs could not be made; return "failed" then."""
    with db.session() as session:
        absent, failed = jobs.missing_inputs(session, job.depends)
    if not absent:
        return None
    reasons = "; ".join(failed) or f"{len(absent)} artifact(s) never made"
    jobs.fail_job(db, job.id, f"an input could not be made: {reasons}")
    return "failed"


class _Worker:
    """A worker process and the parent's end of its pipe; ``job``: the job it runs now."""

    def __init__(self, settings: Settings, tracks: dict[str, Track], threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited connections, threads or torch state
        self.pipe, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(settings, tracks, threads, child), name="arena-job", daemon=False
        )
        self.process.start()
        child.close()
        self.job: Todo | None = None

    def answer(self) -> str | None:
        """The final state of the job it ran, or None when it died first (then it is waited for)."""
        try:
            return self.pipe.recv()
        except (EOFError, OSError):
            self.process.join()
            self.pipe.close()
            return None

    def stop(self) -> None:
        """Ask the worker to end, and wait for it (ended by force if it does not)."""
        with contextlib.suppress(OSError):
            self.pipe.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


def run(
    db: Database, settings: Settings, tracks: dict[str, Track], todo: list[Todo], count: int, bar: tqdm
) -> Counter[str]:
    """Run the jobs ``todo`` (in their order, each once its inputs' jobs have ended) on ``count`` workers."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1) // count)
    waiting, states = deque(todo), Counter[str]()
    unmade = {job.key for job in todo}  # the keys jobs of this run will make (or fail to)
    workers = [_Worker(settings, tracks, threads) for _ in range(count)]
    try:
        while waiting or any(w.job for w in workers):
            for worker in workers:
                while worker.job is None and (job := _next(waiting, unmade)) is not None:
                    if (failed := fail_if_unmade(db, job)) is not None:
                        states[failed] += 1
                        unmade.discard(job.key)
                        bar.update()
                    else:
                        worker.job = job
                        worker.pipe.send(job.id)
            busy = [w for w in workers if w.job is not None]
            if not busy:
                if waiting:  # every waiting job waits for another waiting one: never, the planner makes no cycles
                    raise RuntimeError(f"jobs {[j.id for j in waiting]} wait for each other's outputs")
                continue
            ready = wait([w.pipe for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                if worker.pipe not in ready and worker.process.sentinel not in ready:
                    continue
                job, worker.job = worker.job, None
                if (state := worker.answer()) is not None:
                    states[state] += 1
                    unmade.discard(job.key)
                    bar.update()
                else:  # died with its job: put back, played again by a fresh worker
                    _take_back(db, job, worker.process.exitcode)
                    waiting.appendleft(job)
                if not worker.process.is_alive():
                    workers[workers.index(worker)] = _Worker(settings, tracks, threads)
    finally:
        for worker in workers:
            worker.stop()
    return states


def _next(waiting: deque[Todo], unmade: set[str]) -> Todo | None:
    """The first waiting job none of whose inputs another job of the run still has to make (removed)."""
    for job in waiting:
        if not unmade.intersection(job.depends):
            waiting.remove(job)
            return job
    return None


def _take_back(db: Database, job: Todo, exitcode: int | None) -> None:
    """Put a dead worker's job back in the queue, with why (its attempt counts)."""
    with db.session() as session:
        state, attempts, worker = session.execute(
            select(Job.state, Job.attempts, Job.worker).where(Job.id == job.id)
        ).one()
    if state == "running":
        reason = f"attempt {attempts} was lost: its worker ({worker}) died (exit code {exitcode})"
        jobs.requeue(db, job.id, attempts, reason)
    log.warning("job %d: its worker died (exit code %s); played again", job.id, exitcode)


def _serve(settings: Settings, tracks: dict[str, Track], threads: int, pipe: Connection) -> None:
    """A worker process: run each job id received, answer its final state; end at None or when the parent is gone."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the sandboxes this worker starts inherit it
    import torch

    torch.set_num_threads(threads)
    db = Database(settings.database_url)
    with WorkerState() as state:  # this worker's own: closed when it ends
        try:
            while True:
                try:
                    job_id = pipe.recv()
                except EOFError:
                    return
                if job_id is None:
                    return
                pipe.send(execute_here(db, settings, state, job_id, tracks))
        finally:
            db.dispose()
