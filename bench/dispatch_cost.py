"""What finishing one job costs the dispatcher, with 1,000 / 5,000 / 15,000 jobs queued, on SQLite and PostgreSQL.

A worker that finishes a job marks it done, then sends the jobs its output made ready
(``Dispatcher.advance(..., only=[key])``, which also checks whether the round is done): that bookkeeping is
timed here, over a round of queued matches that each wait for three artifacts which exist (the defense,
its twin and the substitute), the state of a class's round once training is over; beside it, a follower's
periodic sweep of that round (``arena round run --wait``, ``arena scheduler``). The broker is a real
Redis (``--broker``, database 7 by default); PostgreSQL is the local server (``--postgres``), in a
database made for the run and dropped after it.

    python bench/dispatch_cost.py [--queued 1000 --queued 5000 --queued 15000] [--finish 50]

To compare with the code before a change, run it with the old tree first on ``PYTHONPATH``; the figures
are in docs/architecture.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from arena import store
from arena.execution import dispatch, tasks
from arena.rules.tracks import TRACKS
from arena.store import Artifact, Database, Job, Round

TRACK = TRACKS["digits"]
INPUTS = ("defense", "twin", "substitute")


def fill(db: Database, queued: int) -> int:
    """A running round of ``queued`` matches whose inputs exist; return its id."""
    with db.session() as session:
        round_ = Round(number=1, status="running", seed=0, tracks=[TRACK.name])
        session.add(round_)
        for kind in INPUTS:
            session.add(Artifact(key=f"artifact-{kind}", kind=kind, track=TRACK.name, data=b"", meta={}))
        session.flush()
        depends = [f"artifact-{kind}" for kind in INPUTS]
        for n in range(queued):
            job = Job(round_id=round_.id, kind="match", key=f"match-{n}", params={"track": TRACK.name})
            job.depends_on = depends
            if hasattr(store, "JobInput"):  # the index of inputs, where the code has one
                job.inputs = [store.JobInput(key=key) for key in depends]
            session.add(job)
        return round_.id


def finish(db: Database, dispatcher: dispatch.Dispatcher, round_id: int, count: int) -> list[float]:
    """Seconds of bookkeeping per finished job, for ``count`` jobs (their messages count as sent)."""
    with db.session() as session:
        picked = session.execute(select_open(round_id).limit(count)).all()
    for job_id, _ in picked:
        dispatcher.keys.mark(job_id)
    seconds = []
    for job_id, key in picked:
        started = time.perf_counter()
        with db.session() as session:
            job = session.get(Job, job_id)
            job.state = "done"
        dispatcher.keys.unmark(job_id)
        dispatcher.advance(round_id, {TRACK.name: TRACK}, only=[key])
        seconds.append(time.perf_counter() - started)
    return seconds


def sweep(dispatcher: dispatch.Dispatcher, round_id: int, repeat: int) -> list[float]:
    """Seconds of a follower's sweep (:meth:`Dispatcher.sweep`) over the round, every job's message just sent."""
    with dispatcher.db.session() as session:
        ids = [job_id for job_id, _ in session.execute(select_open(round_id)).all()]
    seconds = []
    for _ in range(repeat):
        with dispatcher.keys.redis.pipeline() as marks:  # every message sent now: none counts as lost
            for job_id in ids:
                marks.set(f"{dispatch.PREFIX}:sent:{job_id}", time.time())
            marks.execute()
        started = time.perf_counter()
        dispatcher.sweep(round_id, {TRACK.name: TRACK})
        seconds.append(time.perf_counter() - started)
    return seconds


def select_open(round_id: int) -> sa.Select:
    return sa.select(Job.id, Job.key).where(Job.round_id == round_id, Job.state == "queued").order_by(Job.id)


def postgres_database(server: str) -> tuple[str, sa.Engine]:
    """A fresh database on ``server``: its URL, and the server's engine to drop it with."""
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    name = f"arena_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    return f"{server}/{name}", admin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, action="append", help="jobs queued (repeatable) [1000, 5000, 15000]")
    parser.add_argument("--finish", type=int, default=50, help="jobs finished per measure [50]")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    app, keys = tasks.create_app(args.broker), dispatch.Keys(args.broker)
    print("| backend | queued | ms per finished job (median) | max | ms per sweep of the round (median of 5) |")
    print("|---|---|---|---|---|")
    for backend in ("sqlite", "postgresql"):
        for queued in args.queued or [1000, 5000, 15000]:
            with tempfile.TemporaryDirectory() as folder:
                admin = None
                if backend == "sqlite":
                    url = f"sqlite:///{Path(folder) / 'arena.db'}"
                else:
                    url, admin = postgres_database(args.postgres)
                db = Database(url)
                try:
                    db.upgrade()
                    round_id = fill(db, queued)
                    dispatcher = dispatch.Dispatcher(db, app, keys)
                    seconds = finish(db, dispatcher, round_id, args.finish)
                    median, worst = statistics.median(seconds) * 1000, max(seconds) * 1000
                    swept = statistics.median(sweep(dispatcher, round_id, 5)) * 1000
                    print(f"| {backend} | {queued} | {median:.1f} | {worst:.1f} | {swept:.0f} |", flush=True)
                finally:
                    db.dispose()
                    if admin is not None:
                        with admin.connect() as connection:
                            connection.execute(sa.text(f"DROP DATABASE {url.rsplit('/', 1)[1]}"))
                        admin.dispose()
    keys.redis.flushdb()


if __name__ == "__main__":
    main()
