"""The parts of distributed mode, each on its own: attempts, leases, sweeps, the hard limit, `arena worker`'s
plan, docker-compose.yml. Real databases and a real Redis; whole rounds through workers are in test_celery.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner
from services import redis_url

from arena.commands.cli import main
from arena.config import Settings
from arena.execution import dispatch, jobs, rounds, tasks
from arena.execution.state import WorkerState
from arena.execution.workers import plan_workers
from arena.rules.tracks import TRACKS
from arena.store import Artifact, Database, Job, JobInput, Plugin, PluginVersion, Round, RoundMatch, Team

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(database: Database) -> Database:
    """The shared migrated database (SQLite, or a fresh PostgreSQL one), under this module's short name."""
    return database


@pytest.fixture
def broker() -> Iterator[str]:
    """A Redis database of the test's own."""
    with redis_url() as url:
        yield url


@pytest.fixture
def keys(broker: str) -> dispatch.Keys:
    """The arena's keys on the test's Redis database."""
    return dispatch.Keys(broker)


def queued_job(db: Database, kind: str = "train-substitute") -> int:
    with db.session() as session:
        job = Job(kind=kind, key=f"{kind}-key", params={"track": "digits"}, depends_on=[])
        session.add(job)
        session.flush()
        return job.id


def job_row(db: Database, job_id: int) -> Job:
    with db.session() as session:
        return session.get(Job, job_id)


# --------------------------------------------------------------------------------------------------
# Attempts: an error of the arena is retried, a lost attempt counts, and both stop
# --------------------------------------------------------------------------------------------------


def test_an_error_of_the_arena_is_stored_retried_and_bounded(db: Database, settings: Settings) -> None:
    job_id = queued_job(db)
    with pytest.raises(KeyError):  # no such track: an error of the arena, not of a plugin
        jobs.execute(db, settings, job_id, tracks={}, state=WorkerState(), worker="w1", max_attempts=2)
    job = job_row(db, job_id)
    assert (job.state, job.attempts, job.worker) == ("queued", 1, "w1")
    assert job.error.startswith("attempt 1 failed: KeyError: 'digits'")

    assert jobs.execute(db, settings, job_id, tracks={}, state=WorkerState(), worker="w2", max_attempts=2) == "failed"
    job = job_row(db, job_id)
    assert (job.state, job.attempts) == ("failed", 2)
    assert job.error.startswith("gave up after 2 attempt(s); the last: KeyError: 'digits'")
    assert jobs.execute(db, settings, job_id, tracks={}, state=WorkerState(), max_attempts=2) == "failed", (
        "a finished job stays so"
    )


def test_an_attempt_whose_worker_was_lost_counts(db: Database, settings: Settings) -> None:
    job_id = queued_job(db)
    with db.session() as session:  # claimed by a worker that then died
        job = session.get(Job, job_id)
        job.state, job.attempts, job.worker = "running", 1, "gpu0@lost"
    assert jobs.execute(db, settings, job_id, tracks={}, state=WorkerState(), max_attempts=1) == "failed"
    job = job_row(db, job_id)
    assert job.error == (
        "gave up after 1 attempt(s); the last: attempt 1 was lost: its worker gpu0@lost stopped before finishing"
    )


def test_requeue_leaves_a_job_that_moved_on(db: Database) -> None:
    job_id = queued_job(db)
    with db.session() as session:
        job = session.get(Job, job_id)
        job.state, job.attempts = "running", 2
    assert not jobs.requeue(db, job_id, attempts=1, reason="stale view: claimed again since")
    assert jobs.requeue(db, job_id, attempts=2, reason="its worker died")
    assert (job_row(db, job_id).state, job_row(db, job_id).error) == ("queued", "its worker died")
    assert not jobs.requeue(db, job_id, attempts=2, reason="not running any more")


# --------------------------------------------------------------------------------------------------
# Leases and sweeps (Redis)
# --------------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from arena.execution import dispatch
with dispatch.Keys(sys.argv[1]).lease(7, "gpu0@dead", seconds=1.0) as lease:
    print("held" if lease.held else "not held", flush=True)
    time.sleep(60)
"""


@pytest.mark.service
def test_a_lease_excludes_other_workers_and_dies_with_its_holder(keys: dispatch.Keys, broker: str) -> None:
    with subprocess.Popen([sys.executable, "-c", HOLDER, broker], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            time.sleep(1.5)  # longer than the lease: only its refreshes keep it
            with keys.lease(7, "gpu1@alive") as other:
                assert not other.held, "a live worker's lease excludes others"
            assert keys.leased([7, 8]) == {7}
        finally:
            holder.kill()
    time.sleep(1.2)
    assert keys.leased([7]) == set(), "the lease expires with its holder"
    with keys.lease(7, "gpu1@alive") as taken:
        assert taken.held and keys.leased([7]) == {7}
    assert keys.leased([7]) == set(), "released when the job ends"


@pytest.mark.service
def test_a_worker_takes_over_its_own_leftover_lease(keys: dispatch.Keys) -> None:
    keys.redis.set(f"{dispatch.PREFIX}:lease:3", "gpu0@host", px=60_000)  # left by its previous process
    with keys.lease(3, "gpu0@host") as lease:
        assert lease.held


@pytest.mark.service
def test_a_sweep_takes_back_the_job_of_a_lost_worker(db: Database, keys: dispatch.Keys) -> None:
    with db.session() as session:
        round_ = Round(number=1, tracks=["digits"], status="running")
        session.add(round_)
        session.flush()
        lost = Job(round_id=round_.id, kind="match", key="k1", params={"track": "digits"}, state="running")
        alive = Job(round_id=round_.id, kind="match", key="k2", params={"track": "digits"}, state="running")
        lost.attempts, lost.worker, alive.attempts = 1, "gpu0@gone", 1
        session.add_all([lost, alive])
        session.flush()
        round_id, lost_id, alive_id = round_.id, lost.id, alive.id
    keys.mark(lost_id)
    with keys.lease(alive_id, "gpu1@here") as lease:
        assert lease.held
        taken = dispatch.Dispatcher(db, tasks.create_app(None), keys).reap(round_id)
    assert taken == [lost_id]
    assert job_row(db, lost_id).state == "queued" and job_row(db, alive_id).state == "running"
    assert job_row(db, lost_id).error == "attempt 1 was lost: its worker gpu0@gone stopped answering"
    assert keys.sent([lost_id]) == {}, "unmarked, so the next sweep sends it again"


@pytest.mark.service
def test_a_job_is_sent_once_to_the_queue_of_its_kind(broker: str, keys: dispatch.Keys) -> None:
    app = tasks.create_app(broker)
    try:
        assert dispatch.queue_sizes(app) == {"cpu": 0, "gpu": 0}  # declared, as workers of both kinds do
        assert dispatch.send(app, keys, 1, "train-substitute", TRACKS["digits"], None)
        assert not dispatch.send(app, keys, 1, "train-substitute", TRACKS["digits"], None), "marked: not sent twice"
        assert dispatch.send(app, keys, 2, "match", TRACKS["digits"], None)
        assert dispatch.queue_sizes(app) == {"cpu": 1, "gpu": 1}
        assert set(keys.sent([1, 2, 3])) == {1, 2}
        assert dispatch.send(app, keys, 2, "match", TRACKS["digits"], None, again=True), "a lost message is resent"
        assert dispatch.queue_sizes(app) == {"cpu": 1, "gpu": 2}
    finally:
        app.close()


def sent_order(broker: str, queue: str) -> list[int]:
    """The job ids of the messages waiting in ``queue``, oldest first (kombu pushes to the list's head)."""
    messages = redis.Redis.from_url(broker).lrange(queue, 0, -1)
    return [int(json.loads(m)["headers"]["id"].split("-")[1]) for m in reversed(messages)]


@pytest.mark.service
def test_matches_wait_for_their_tracks_training_then_go_out_attack_by_attack(
    db: Database, broker: str, keys: dispatch.Keys
) -> None:
    """Sent as each defense became ready, consecutive matches changed attack: a worker's warm attack processes
    (one per attack, track and threat) never served two matches in a row."""
    app = tasks.create_app(broker)
    try:
        with db.session() as session:
            round_ = Round(number=1, tracks=["digits"], status="running")
            session.add(round_)
            session.flush()
            common = {"round_id": round_.id, "params": {"track": "digits"}}
            training = Job(kind="train-substitute", key="substitute", depends_on=[], **common)
            matches = [  # the planner's order: attack, then defense
                Job(kind="match", key=f"{a}-{d}", depends_on=[f"defense-{d}"], **common) for a in "AB" for d in "xy"
            ]
            for job in matches:
                job.inputs = [JobInput(key=key) for key in job.depends_on]
            session.add_all([training, *matches])
            session.flush()
            round_id, training_id, planned = round_.id, training.id, [job.id for job in matches]
        dispatcher = dispatch.Dispatcher(db, app, keys)
        dispatcher.advance(round_id, {"digits": TRACKS["digits"]})
        assert dispatch.queue_sizes(app) == {"cpu": 1, "gpu": 0}  # the training, sent; no match is ready

        for defense in "xy":  # the defenses are trained one after the other, while the training job waits
            with db.session() as session:
                session.add(Artifact(key=f"defense-{defense}", kind="defense", track="digits", data=b"", meta={}))
            dispatcher.advance(round_id, {"digits": TRACKS["digits"]}, only=[f"defense-{defense}"])
        assert sent_order(broker, "gpu") == [], "held while their track's training waits in the queue"

        with db.session() as session:  # a worker takes the training job
            session.get(Job, training_id).state = "running"
        dispatcher.advance(round_id, {"digits": TRACKS["digits"]})
        assert sent_order(broker, "gpu") == planned, "all at once, attack by attack"
    finally:
        app.close()


def test_keys_need_a_redis_broker() -> None:
    with pytest.raises(ValueError, match="must be a Redis URL"):
        dispatch.Keys("amqp://guest@localhost//")


# --------------------------------------------------------------------------------------------------
# The hard time limit
# --------------------------------------------------------------------------------------------------

OVER_LIMIT = """
import sys, time
from arena.execution import tasks
from arena.store import Database
with tasks._hard_limit(Database(sys.argv[1]), int(sys.argv[2]), 0.5):
    time.sleep(30)
"""


def test_a_job_over_its_hard_limit_fails_and_its_worker_process_exits(db: Database) -> None:
    job_id = queued_job(db)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", OVER_LIMIT, db.url, str(job_id)], capture_output=True, timeout=60)
    assert done.returncode == tasks.EXIT_OVER_LIMIT, done.stderr.decode()
    assert time.monotonic() - started < 20
    job = job_row(db, job_id)
    assert (job.state, job.error) == ("failed", "exceeded the hard time limit of 0.5 s")


def test_every_hard_limit_stays_below_the_visibility_timeout() -> None:
    assert all(dispatch.hard_limit(track) < tasks.VISIBILITY_TIMEOUT for track in TRACKS.values())


# --------------------------------------------------------------------------------------------------
# `arena worker` and docker-compose.yml
# --------------------------------------------------------------------------------------------------


def test_one_worker_per_gpu_pinned_to_it() -> None:
    workers = plan_workers([("0", "A"), ("3", "B")], None, None, "42", {"PATH": "/bin"})
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in workers] == ["0", "3"]
    assert [w.name.split("@")[0] for w in workers] == ["gpu0.42", "gpu1.42"]
    assert all(w.queues == ["gpu", "cpu"] and w.env["PATH"] == "/bin" for w in workers)
    cores = os.cpu_count() or 1
    assert [w.env["OMP_NUM_THREADS"] for w in workers] == [str(max(1, cores // 2))] * 2  # the cores shared
    (single,) = plan_workers([("0", "A"), ("3", "B")], 1, None, "42", {})
    assert single.env["OMP_NUM_THREADS"] == str(cores)
    with pytest.raises(click.UsageError, match="only 2 GPU"):
        plan_workers([("0", "A"), ("3", "B")], 3, None, "42", {})


def test_cpu_workers_where_there_is_no_gpu() -> None:
    (single,) = plan_workers([], None, None, "7", {})
    assert single.queues == ["cpu", "gpu"] and single.env["CUDA_VISIBLE_DEVICES"] == ""
    pair = plan_workers([], 2, "cpu", "7", {"OMP_NUM_THREADS": "3"})
    assert [w.queues for w in pair] == [["cpu"], ["cpu"]]
    assert [w.env["OMP_NUM_THREADS"] for w in pair] == ["3", "3"]


def test_arena_worker_needs_a_broker(arena_home: Path) -> None:
    out = CliRunner().invoke(main, ["worker"])
    assert out.exit_code == 2 and "ARENA_BROKER_URL" in out.output


def test_every_job_kind_goes_to_a_queue_of_a_device_kind() -> None:
    app = tasks.create_app(None)
    queues = {
        kind: dispatch.queue_of(app, kind) for kind in ("train-substitute", "train-defense", "train-twin", "match")
    }
    assert queues == {"train-substitute": "cpu", "train-defense": "gpu", "train-twin": "gpu", "match": "gpu"}
    assert set(queues.values()) <= {q.name for q in app.conf.task_queues}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed (.ci/run installs it)")
def test_docker_compose_file_is_valid() -> None:
    def compose(*args: str) -> str:
        done = subprocess.run(["docker-compose", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    compose("config", "-q")
    assert set(compose("config", "--services").split()) >= {"redis", "postgres", "web", "scheduler", "worker", "flower"}
    resolved = compose("config")
    assert "driver: nvidia" in resolved and "- gpu" in resolved
    assert "ARENA_BROKER_URL: redis://:arena@redis:6379/0" in resolved


def test_a_round_waits_for_the_jobs_of_another_round_that_its_matches_need(db: Database) -> None:
    with db.session() as session:
        team = Team(name="red")
        attack, defense = (
            PluginVersion(
                plugin=Plugin(team=team, name=kind, kind=kind),
                content_hash=kind[0] * 64,
                source=kind,
                archive=b"zip",
                manifest={},
            )
            for kind in ("attack", "defense")
        )
        first, second = Round(number=1, tracks=["digits"]), Round(number=2, tracks=["digits"])
        session.add_all([attack, defense, first, second])
        session.flush()
        # round 1 plays the match; round 2, planned meanwhile, reuses its key instead of planning it again
        shared = Job(round_id=first.id, kind="match", key="k", params={"track": "digits"}, state="running")
        cell = RoundMatch(
            round_id=second.id,
            result_key="k",
            attack_version_id=attack.id,
            defense_version_id=defense.id,
            track="digits",
            threat="white-box",
        )
        session.add_all([shared, cell])
        session.flush()
        first_id, second_id, shared_id = first.id, second.id, shared.id
    assert not rounds.finish_round(db, second_id), "its match is still being played by round 1"
    with db.session() as session:
        session.get(Job, shared_id).state = "done"
    assert rounds.finish_round(db, second_id) and rounds.finish_round(db, first_id)
    with db.session() as session:
        assert session.get(Round, second_id).status == "done"
