"""Celery: the app, its settings for long jobs, the routing of jobs to queues, and the thin tasks.

Each task runs one job of the database through :func:`arena.execution.jobs.execute`, the function the local
executor runs; a task's message carries only the job's id, its track and (for a defense or its twin)
the training seed, so a worker needs nothing but the package and the URLs (``ARENA_BROKER_URL``,
``ARENA_DATABASE_URL``): plugin code and artifacts come from the database.

Workers run with ``--pool threads --concurrency 1`` (``arena worker`` starts them so): plugin code
runs in sandbox processes (:mod:`arena.sandbox`), which the daemonic children of Celery's prefork
pool may not start, and a thread leaves the worker's main thread free to answer heartbeats and
``celery inspect`` while a long job runs. Celery enforces time limits only in the prefork pool, so
the arena enforces its own: every plugin call has its track's ``time_limit`` (the soft limit, which
fails only that match), and a job over :func:`arena.execution.dispatch.hard_limit` is failed and its worker
process exits, to be restarted by ``arena worker``.

    celery --app arena.execution.tasks worker --pool threads --concurrency 1 --queues gpu,cpu

Importing the module builds no app: the command line's ``tasks.app`` is built when Celery asks for it, the
arena's own code calls :func:`create_app`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import click
from celery import Celery, Task, bootsteps
from kombu import Exchange, Queue
from sqlalchemy import select

from arena.classroom import pushes
from arena.config import Settings, broker_url
from arena.execution import dispatch, jobs
from arena.execution.state import WorkerState
from arena.plan.planner import JOB_ORDER
from arena.rules.tracks import Track
from arena.store import Database, Job

log = logging.getLogger(__name__)

#: one queue per device kind; a GPU worker serves both, a CPU worker ``cpu`` (and ``gpu`` where no GPU exists)
QUEUES = ("gpu", "cpu")
#: routing, in one place: the substitute is the arena's own small model, the rest is the plugins' heavy work
ROUTES = {
    dispatch.task_name("train-substitute"): {"queue": "cpu"},
    dispatch.task_name("train-defense"): {"queue": "gpu"},
    dispatch.task_name("train-twin"): {"queue": "gpu"},
    dispatch.task_name("match"): {"queue": "gpu"},
    pushes.TASK: {"queue": pushes.QUEUE},  # a webhook's push: a sync, with its small smoke match
}
#: seconds before Redis hands an unacknowledged message to another worker; above every job's hard limit
VISIBILITY_TIMEOUT = 12 * 3600
#: seconds before a job that met an error of the arena is tried again
RETRY_SECONDS = 5
#: exit status of a worker process that gave up a job over its hard time limit
EXIT_OVER_LIMIT = 70

CONFIG = {
    "task_acks_late": True,  # acknowledge after the job: a worker that dies leaves its message for another
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,  # a worker reserves only the job it runs
    "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": None,  # wait for a restarted Redis, however long
    "worker_cancel_long_running_tasks_on_connection_loss": False,  # a job keeps running; its result is written once
    "task_queues": tuple(Queue(name, Exchange(name), routing_key=name) for name in QUEUES),
    "task_default_queue": "gpu",
    "task_routes": ROUTES,
    "task_ignore_result": True,  # the database holds the outcome
    "task_serializer": "json",
    "accept_content": ["json"],
    # no monitoring events unless asked: each costs the worker a message to Redis per job (Flower asks: its
    # enable_events option, on by default, turns them on in every worker it sees)
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "arena_lease_seconds": dispatch.LEASE_SECONDS,
    "arena_max_attempts": jobs.MAX_ATTEMPTS,
}


class CeleryWorkerState(WorkerState):
    """A Celery worker's state (:class:`WorkerState`), and the arena's keys in its broker."""

    def __init__(self, broker_url: str) -> None:
        super().__init__()
        self.broker_url = broker_url

    @functools.cached_property
    def keys(self) -> dispatch.Keys:
        """Sent marks and leases, in the broker's Redis."""
        return dispatch.Keys(self.broker_url)


class _WorkerStateStep(bootsteps.StartStopStep):
    """Makes the worker's state with the worker (before it consumes a task) and closes it when the worker stops."""

    def __init__(self, parent: object, **options: object) -> None:
        super().__init__(parent, **options)
        app = parent.app  # type: ignore[attr-defined]
        app.arena_state = CeleryWorkerState(app.conf.broker_url)

    def stop(self, parent: object) -> None:
        parent.app.arena_state.close()  # type: ignore[attr-defined]

    terminate = stop


def worker_state(app: Celery) -> CeleryWorkerState:
    """The state of the worker this task runs in (made by its start-up step)."""
    state = getattr(app, "arena_state", None)
    if state is None:
        raise RuntimeError("no worker state: tasks run in an `arena worker` (a Celery worker of this app)")
    return state


class _WorkerOptions(bootsteps.Step):
    """Reads the arena's own ``celery worker`` options into the app's configuration."""

    def __init__(
        self, parent: object, lease_seconds: float | None = None, max_attempts: int | None = None, **options: object
    ) -> None:
        super().__init__(parent)
        conf = parent.app.conf  # type: ignore[attr-defined]
        if lease_seconds is not None:
            conf.arena_lease_seconds = lease_seconds
        if max_attempts is not None:
            conf.arena_max_attempts = max_attempts


def create_app(broker_url: str | None) -> Celery:
    """The arena's Celery app on ``broker_url`` (Redis), with one task per job kind."""
    app = Celery("arena", broker=broker_url, set_as_current=False)
    app.conf.update(CONFIG)
    for kind in JOB_ORDER:
        app.task(bind=True, name=dispatch.task_name(kind), max_retries=None, shared=False)(run_job)
    app.task(bind=True, name=pushes.TASK, shared=False)(sync_pushes)
    app.user_options["worker"].add(
        click.Option(["--lease-seconds"], type=float, help=f"Lease on a running job [{dispatch.LEASE_SECONDS:g}].")
    )
    app.user_options["worker"].add(
        click.Option(["--max-attempts"], type=click.IntRange(1), help=f"Starts per job [{jobs.MAX_ATTEMPTS}].")
    )
    app.steps["worker"].add(_WorkerOptions)
    app.steps["worker"].add(_WorkerStateStep)
    return app


def run_job(task: Task, job_id: int, track: dict, seed: int | None) -> str:
    """Run one job under a lease and the hard time limit; then send the jobs it made ready.

    A duplicate delivery (another live worker holds the job's lease) does nothing. An error of the
    arena is retried (the database counts the attempts and stops them, see :func:`arena.execution.jobs.execute`).
    """
    settings, state = Settings.from_env(), worker_state(task.app)
    db = state.database(settings.database_url)
    worker, conf, rules = task.request.hostname, task.app.conf, Track(**track)
    try:
        with state.keys.lease(job_id, worker, conf.arena_lease_seconds) as lease:
            if not lease.held:
                log.info("job %d runs on another worker: this delivery is a duplicate", job_id)
                return "duplicate"
            with _hard_limit(db, job_id, dispatch.hard_limit(rules)):
                ended = jobs.execute(
                    db, settings, job_id, {rules.name: rules}, state, worker, seed, conf.arena_max_attempts
                )
    except jobs.UnknownJob as exc:  # retrying cannot help
        log.error("dropping the message of job %d: %s", job_id, exc)
        return "unknown"
    except Exception as exc:  # the broker, the database or the arena failed: try again (the job counts attempts)
        raise task.retry(exc=exc, countdown=RETRY_SECONDS) from exc
    _after(db, task.app, state.keys, job_id, rules)
    return ended


def sync_pushes(task: Task, push_ids: list[int]) -> None:
    """Sync the teams of pushes a webhook announced, one after the other (see :mod:`arena.classroom.pushes`)."""
    settings = Settings.from_env()
    pushes.run_all(worker_state(task.app).database(settings.database_url), settings, push_ids)


def _after(db: Database, app: Celery, keys: dispatch.Keys, job_id: int, track: Track) -> None:
    """Send the jobs this one's output made ready (a sweep does it if the broker cannot be reached now); after a
    training job, once none of its track waits in the queue, every ready match of the track (they waited for that)."""
    with db.session() as session:
        round_id, key, kind = session.execute(select(Job.round_id, Job.key, Job.kind).where(Job.id == job_id)).one()
        if round_id is None:
            return
        everything = kind != "match" and track.name not in dispatch.training_tracks(session, round_id)
    try:
        keys.unmark(job_id)
        dispatch.Dispatcher(db, app, keys).advance(round_id, {track.name: track}, only=None if everything else [key])
    except dispatch.BROKER_ERRORS as exc:
        log.warning("job %d: could not send the jobs it made ready (%s); the next sweep will", job_id, exc)


@contextlib.contextmanager
def _hard_limit(db: Database, job_id: int, seconds: float) -> Iterator[None]:
    """Past ``seconds``, fail the job, kill what the process started and exit (the worker is restarted)."""
    timer = threading.Timer(seconds, _over_limit, (db, job_id, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _over_limit(db: Database, job_id: int, seconds: float) -> None:
    reason = f"exceeded the hard time limit of {seconds:g} s"
    log.critical("job %d %s: failing it and stopping this worker process", job_id, reason)
    try:
        jobs.fail_job(db, job_id, reason)
    finally:
        _kill_descendants()
        os._exit(EXIT_OVER_LIMIT)


def _kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (sandboxes, the forkserver)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def __getattr__(name: str) -> Celery:
    """``app``: the app of ``celery --app arena.execution.tasks`` (workers, ``inspect``, Flower) on
    ``ARENA_BROKER_URL``, built when Celery asks for it: importing this module builds no app."""
    if name == "app":
        return create_app(broker_url())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
