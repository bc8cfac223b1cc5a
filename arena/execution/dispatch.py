"""Distributed mode's bookkeeping: which jobs to send to the workers, and which to take back from lost ones.

The database is the truth; Redis (the broker) carries Celery's messages and two kinds of keys of the
arena's own, so one Redis database serves one arena:

``arena:sent:<job>``
    the job's message was sent (the value: when), so a sweep does not send it twice. The marks live
    and die with the messages: if Redis loses its data, the jobs are sent again.
``arena:lease:<job>``
    the worker running the job. It refreshes the lease while the job runs; when the worker dies, the
    lease expires and a sweep puts the job back in the queue (it counts as an attempt, see
    :func:`arena.execution.jobs.execute`), far sooner than the broker's visibility timeout would redeliver it.

A :class:`Dispatcher` sweep, run by ``arena round run --wait`` and ``arena scheduler`` every few seconds
(and, for the jobs one job made ready, by the worker that finished it): take back the jobs of lost
workers, fail the jobs whose inputs failed, send the jobs whose inputs exist, mark the round done.
Only a process holding the arena's secret sends training jobs: their seeds derive from it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.config import Settings
from arena.execution import jobs
from arena.execution.rounds import finish_round
from arena.rules.tracks import Track
from arena.store import Database, Job, JobInput

log = logging.getLogger(__name__)

PREFIX = "arena"
#: a worker's lease on its job lives this long without a refresh
LEASE_SECONDS = 15.0
#: after Redis (re)starts, missing leases are not trusted for this long: a Redis that lost its data lost
#: the leases of live workers too, which set them again within a refresh interval (:meth:`Lease.refresh_interval`)
REAP_GRACE = 5.0
#: a job sent this long ago and still not started, while its queue is empty, lost its message
STALE_SECONDS = 60.0
#: every job's run stays below this many seconds, per second of its track's ``time_limit`` (plus a margin):
#: a match runs at most three sandboxes one after another (attack, clean and adversarial defense hosts)
HARD_LIMIT_FACTOR = 4
HARD_LIMIT_MARGIN = 120.0

#: atomically take or keep a lease: set it when missing, extend it when it is ours; 0 when another worker has it
_TAKE = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 1
end
return 0
"""
#: delete a lease only if it is still ours
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
#: what an unreachable broker raises (Redis itself, or Celery's publishing through kombu)
BROKER_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, KombuOperationalError, OSError)


def task_name(kind: str) -> str:
    """The Celery task that runs jobs of ``kind`` (``train-defense`` -> ``arena.train_defense``)."""
    return "arena." + kind.replace("-", "_")


def hard_limit(track: Track) -> float:
    """Seconds a job of ``track`` may run before its worker gives it up and restarts."""
    return HARD_LIMIT_FACTOR * track.time_limit + HARD_LIMIT_MARGIN


class Keys:
    """The arena's keys in the broker's Redis: sent marks and leases."""

    def __init__(self, broker_url: str) -> None:
        if not broker_url.startswith(("redis://", "rediss://")):
            raise ValueError(f"ARENA_BROKER_URL must be a Redis URL (redis://host:6379/0), not {broker_url!r}")
        self.redis = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)
        self._take = self.redis.register_script(_TAKE)
        self._release = self.redis.register_script(_RELEASE)

    def mark(self, job_id: int) -> bool:
        """Note that the job's message is sent now; False if it is marked already (another dispatcher sent it)."""
        return bool(self.redis.set(f"{PREFIX}:sent:{job_id}", time.time(), nx=True))

    def unmark(self, job_id: int) -> None:
        """Forget that the job was sent (it finished, or must be sent again)."""
        self.redis.delete(f"{PREFIX}:sent:{job_id}")

    def sent(self, job_ids: list[int]) -> dict[int, float]:
        """When each of ``job_ids`` was sent, for those marked."""
        if not job_ids:
            return {}
        values = self.redis.mget([f"{PREFIX}:sent:{i}" for i in job_ids])
        return {i: float(v) for i, v in zip(job_ids, values, strict=True) if v is not None}

    def uptime(self) -> float:
        """Seconds since Redis started."""
        return float(self.redis.info("server")["uptime_in_seconds"])

    def leased(self, job_ids: list[int]) -> set[int]:
        """Those of ``job_ids`` a worker holds a lease on."""
        if not job_ids:
            return set()
        values = self.redis.mget([f"{PREFIX}:lease:{i}" for i in job_ids])
        return {i for i, v in zip(job_ids, values, strict=True) if v is not None}

    def lease(self, job_id: int, worker: str, seconds: float = LEASE_SECONDS) -> Lease:
        """A lease on the job for ``worker`` (enter it to take it)."""
        return Lease(self, f"{PREFIX}:lease:{job_id}", worker, seconds)


class Lease:
    """Holds ``arena:lease:<job>`` while a job runs; a thread refreshes it until the block ends.

    ``held`` says whether it was taken: False when another live worker runs the job (this delivery
    is a duplicate). A worker takes over a lease under its own name: a worker runs one job at a time,
    so that lease is a leftover of its previous process.
    """

    def __init__(self, keys: Keys, key: str, worker: str, seconds: float) -> None:
        self.keys, self.key, self.worker, self.seconds = keys, key, worker, seconds
        self.held = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name=f"lease {key}", daemon=True)

    @property
    def refresh_interval(self) -> float:
        """Seconds between refreshes: a fifth of the lease, at most 3 s (below :data:`REAP_GRACE`)."""
        return min(self.seconds / 5, 3.0)

    def __enter__(self) -> Lease:
        self.held = self._take() == 1
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.held:
            self._stop.set()
            self._thread.join()
            try:
                self.keys._release(keys=[self.key], args=[self.worker])
            except BROKER_ERRORS as exc:  # it expires by itself
                log.warning("could not release %s (%s); it expires in %.0f s", self.key, exc, self.seconds)

    def _take(self) -> int:
        return self.keys._take(keys=[self.key], args=[self.worker, int(self.seconds * 1000)])

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                if self._take() == 0:
                    log.warning("%s: another worker took over this job; finishing it anyway", self.key)
            except BROKER_ERRORS as exc:
                log.warning("could not refresh %s (%s); trying again", self.key, exc)


@dataclass
class Dispatcher:
    """Sends a round's jobs to the workers and recovers those of lost workers (see the module's docs).

    ``settings`` is the secret holder's: without it, training jobs (their seeds derive from the
    secret) are left for a dispatcher that has it.
    """

    db: Database
    app: Celery
    keys: Keys
    settings: Settings | None = None

    def sweep(self, round_id: int, tracks: Mapping[str, Track]) -> Counter[str]:
        """Take back lost jobs, send ready ones, finish the round; return its jobs by state."""
        self.reap(round_id)
        self.advance(round_id, tracks)
        return self.states(round_id)

    def states(self, round_id: int) -> Counter[str]:
        """The round's jobs by state."""
        with self.db.session() as session:
            rows = session.execute(select(Job.state, func.count()).where(Job.round_id == round_id).group_by(Job.state))
            return Counter({state: count for state, count in rows})

    def reap(self, round_id: int) -> list[int]:
        """Put back in the queue the running jobs whose lease is gone (their worker died); return their ids.

        Not in the first :data:`REAP_GRACE` seconds after Redis (re)started: a Redis that lost its data
        lost the leases of live workers too, which set them again within a refresh interval.
        """
        if self.keys.uptime() < REAP_GRACE:
            return []
        with self.db.session() as session:
            running = session.execute(
                select(Job.id, Job.attempts, Job.worker).where(Job.round_id == round_id, Job.state == "running")
            ).all()
        held = self.keys.leased([job_id for job_id, _, _ in running])
        taken = []
        for job_id, attempts, worker in running:
            reason = f"attempt {attempts} was lost: its worker {worker} stopped answering"
            if job_id not in held and jobs.requeue(self.db, job_id, attempts, reason):
                log.warning("job %d: %s; sending it again", job_id, reason)
                self.keys.unmark(job_id)
                taken.append(job_id)
        return taken

    def advance(self, round_id: int, tracks: Mapping[str, Track], only: Iterable[str] | None = None) -> int:
        """Fail the queued jobs whose inputs failed, send those whose inputs exist; return how many were sent.

        ``only``: consider just the jobs that depend on one of these keys (after the job that made them).
        Jobs of tracks not in ``tracks`` wait for a dispatcher that knows them.

        Matches wait while a training job of their round and track waits in the queue, then go out in the
        planner's order (track, attack, defense, threat): a worker's warm attack processes (one per attack,
        track and threat, :class:`arena.play.match.AttackPool`) then serve one defense after another. Sent as each
        defense became ready, consecutive matches changed attack every three: no attack process stayed warm.
        """
        with self.db.session() as session:
            columns = (Job.id, Job.kind, Job.params, Job.depends_on)
            query = select(*columns).where(Job.round_id == round_id, Job.state == "queued").order_by(Job.id)
            if only is not None:  # through the index of inputs first (a query planner without statistics
                # would read the whole queue for a subquery): the queue's length does not matter
                waiting = session.scalars(select(JobInput.job_id).where(JobInput.key.in_(list(only)))).all()
                query = query.where(Job.id.in_(waiting))
            queued = session.execute(query).all() if only is None or waiting else []
            missing = jobs.missing_inputs_of(session, [job.depends_on for job in queued])
            seeds = {
                job.id: jobs.training_seed(session, self.settings, job.kind, job.params)
                for job in queued
                if self.settings is not None and job.kind in jobs.SEEDED
            }
            training = training_tracks(session, round_id) if any(job.kind == "match" for job in queued) else set()
        todo = [(job.id, job.kind, job.params["track"], *inputs) for job, inputs in zip(queued, missing, strict=True)]
        sent_at = self.keys.sent([job_id for job_id, *_ in todo])
        empty: set[str] | None = None  # the queues found empty: asked once, and only when a job looks lost
        count = 0
        for job_id, kind, track, absent, failed in todo:
            held = kind == "match" and track in training  # until its track's training has started
            if failed:
                jobs.fail_job(self.db, job_id, f"an input could not be made: {'; '.join(failed)}")
            elif absent or held or track not in tracks or (kind in jobs.SEEDED and job_id not in seeds):
                continue
            elif job_id not in sent_at:
                count += send(self.app, self.keys, job_id, kind, tracks[track], seeds.get(job_id))
            elif time.time() - sent_at[job_id] >= STALE_SECONDS:
                empty = self._empty_queues() if empty is None else empty
                if queue_of(self.app, kind) in empty:
                    ago = time.time() - sent_at[job_id]
                    log.warning("job %d, sent %.0f s ago, never started and its queue is empty: resending", job_id, ago)
                    count += send(self.app, self.keys, job_id, kind, tracks[track], seeds.get(job_id), again=True)
        finish_round(self.db, round_id)
        return count

    def _empty_queues(self) -> set[str]:
        return {name for name, size in queue_sizes(self.app).items() if size == 0}


def training_tracks(session: Session, round_id: int) -> set[str]:
    """The tracks of the round's training jobs that wait in the queue (their matches wait too: see
    :meth:`Dispatcher.advance`)."""
    waiting = select(Job.params).where(Job.round_id == round_id, Job.state == "queued", Job.kind != "match")
    return {params["track"] for params in session.scalars(waiting)}


def queue_sizes(app: Celery) -> dict[str, int]:
    """How many messages wait in each of the app's queues (declaring them, as a worker does)."""
    with app.connection_for_write() as connection:
        bound = [q(connection.default_channel) for q in app.amqp.queues.values()]
        for queue in bound:
            queue.declare()  # with its exchange and binding
        return {queue.name: queue.queue_declare().message_count for queue in bound}


def queue_of(app: Celery, kind: str) -> str:
    """The queue that jobs of ``kind`` go to (the app's ``task_routes``)."""
    return app.conf.task_routes[task_name(kind)]["queue"]


def send(app: Celery, keys: Keys, job_id: int, kind: str, track: Track, seed: int | None, again: bool = False) -> bool:
    """Send one job's message (routed by its kind) unless another dispatcher just did; return whether sent.

    ``again``: the job was sent before but its message was lost.
    """
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    if hard_limit(track) >= visibility:
        raise ValueError(
            f"track {track.name!r}: its jobs may run {hard_limit(track):.0f} s (time_limit {track.time_limit:.0f} s), "
            f"longer than the broker's visibility timeout of {visibility} s: lower time_limit"
        )
    if again:
        keys.unmark(job_id)
    if not keys.mark(job_id):
        return False
    try:
        app.send_task(
            task_name(kind), args=[job_id, track.config(), seed], task_id=f"job-{job_id}-{uuid.uuid4().hex[:8]}"
        )
    except BROKER_ERRORS:
        keys.unmark(job_id)  # if this fails too, the mark goes stale and a sweep sends the job again
        raise
    return True
