"""Distributed mode with real parts: Redis, PostgreSQL and `arena worker` processes (no eager mode, no mocks).

Each test plays a round on a tiny digits track through Celery workers started as a user starts them
(`arena worker`, with nothing but the package and the URLs), then checks the database, the truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from services import RedisServer, fresh_postgres_database, redis_url
from sqlalchemy import func, select
from test_rounds import write_plugin

from arena.commands.cli import main
from arena.config import Settings
from arena.contract import plugins
from arena.execution import dispatch, follow, tasks
from arena.execution import local as local_executor
from arena.plan import planner, versions
from arena.rules.tracks import Track, load_tracks
from arena.store import Artifact, Database, Job, PluginVersion, Result, Round, RoundMatch
from arena.store.records import unpack

pytestmark = [pytest.mark.slow, pytest.mark.service]

REPO = Path(__file__).resolve().parents[1]
ARENA = Path(sys.executable).parent / "arena"
#: built-in plugins of a small round: 6 matches under the three threats, 5 training jobs
BUILTINS = ("attacks/fgsm", "attacks/transfer", "defenses/undefended", "defenses/fgsm-adv-training")
FGSM, UNDEFENDED = REPO / "plugins" / "attacks" / "fgsm", REPO / "plugins" / "defenses" / "undefended"
ROUND_SECONDS = 240
#: torch threads of the workers and of the local reference they are compared with: another count sums floats in
#: another order, and the models trained then differ in their last bits (now and then enough to flip a gradient's
#: sign or an argmax: 5 of 27 comparisons failed so while the workers had two threads and the reference one)
THREADS = 1
#: digits, small: a round takes seconds (compare tests/test_rounds.py's TINY)
TINY = """
[tracks.tiny]
base = "digits"
eval_size = 20
batch_size = 20
epochs = 1
max_queries = 10
time_limit = 60
"""

SLOW = """
import time

from arena import Attack, hookimpl


class Slow(Attack):
    threats = ("white-box",)

    def run(self, target, x, y, budget):
        print("slow attack: sleeping", flush=True)
        time.sleep({seconds})
        return x.clone()


@hookimpl
def arena_attacks():
    return [Slow]
"""

#: attacks that crash the process that runs them: their sandbox, never the worker (see arena/sandbox/)
CRASHES = {"segfaults": "import ctypes\n        ctypes.string_at(0)", "exits": "import os\n        os._exit(3)"}
CRASH = """
from arena import Attack, hookimpl


class Crash(Attack):
    threats = ("white-box",)

    def run(self, target, x, y, budget):
        {body}


@hookimpl
def arena_attacks():
    return [Crash]
"""


class Workers:
    """`arena worker` processes, each supervising one CPU worker; their output goes to log files."""

    def __init__(self, folder: Path, database_url: str, broker_url: str) -> None:
        self.folder, self.database_url, self.broker_url = folder, database_url, broker_url
        self.supervisors: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, count: int, *options: str) -> None:
        """Start ``count`` `arena worker` processes, each with an arena home of its own (and no secret)."""
        for _ in range(count):
            index = len(self.supervisors)
            env = {
                "PATH": os.environ["PATH"],
                "ARENA_HOME": str(self.folder / f"worker-{index}"),
                "ARENA_DATABASE_URL": self.database_url,
                "ARENA_BROKER_URL": self.broker_url,
                "OMP_NUM_THREADS": str(THREADS),
            }
            log = self.folder / f"worker-{index}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [str(ARENA), "worker", *options], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder
                )
            self.supervisors.append((process, log))

    def log(self) -> str:
        """Everything the workers printed."""
        return "\n".join(log.read_text(errors="replace") for _, log in self.supervisors)

    def pids(self) -> dict[str, int]:
        """The Celery worker processes by node name (the latest process of each name)."""
        return {name: int(pid) for name, pid in re.findall(r"worker (\S+): started \(pid (\d+)", self.log())}

    def wait_ready(self, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` workers answer a ping."""
        app = tasks.create_app(self.broker_url)
        deadline = time.monotonic() + timeout
        try:
            while len(app.control.ping(timeout=1.0)) < count:
                if time.monotonic() > deadline:
                    pytest.fail(f"{count} workers not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")
        finally:
            app.close()

    def stop(self) -> None:
        """Stop the supervisors (SIGTERM, passed on to their workers), then SIGKILL whatever still runs:
        the test's rounds are over, so a warm shutdown would only cost time."""
        workers = list(self.pids().values())
        for process, _ in self.supervisors:
            if process.poll() is None:
                process.terminate()
        time.sleep(1)
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process, _ in self.supervisors:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclasses.dataclass
class Cluster:
    """The test's arena: its settings (PostgreSQL, Redis), database, tracks and workers."""

    settings: Settings
    db: Database
    tracks: dict[str, Track]
    workers: Workers
    plugin_dir: Path

    def record(self, *folders: Path) -> None:
        """Record these plugin versions (the round freezes them)."""
        for folder in folders:
            with self.db.session() as session:
                version, _ = versions.record_version(session, plugins.read_folder(folder), self.settings)
                assert version.valid, version.errors

    def open_round(self) -> int:
        """A round on the tiny track, planned."""
        round_id = planner.open_round(self.db, [self.tracks["tiny"]])
        planner.plan_round(self.db, self.settings, round_id, self.tracks)
        return round_id

    def run(self, round_id: int, wait: bool = True) -> dict[str, int]:
        """Send the round's jobs (and follow it to its end)."""
        return dict(follow.run_celery(self.db, self.settings, self.tracks, round_id, wait, False, 1.0, ROUND_SECONDS))

    def report(self, round_id: int) -> str:
        """The round's jobs (state, attempts, worker, error) and the end of the workers' log, for a failure."""
        lines = [f"{j.id} {j.kind} {j.state} x{j.attempts} {j.worker}: {j.error}" for j in self.jobs(round_id)]
        return "\n".join(lines) + "\n" + self.workers.log()[-4000:]

    def jobs(self, round_id: int) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(select(Job).where(Job.round_id == round_id).order_by(Job.id)))

    def results(self, round_id: int) -> dict[str, Result]:
        """The round's results by key, checking there is exactly one per cell of its matrix."""
        with self.db.session() as session:
            cells = session.scalars(select(RoundMatch.result_key).where(RoundMatch.round_id == round_id)).all()
            rows = session.scalars(select(Result).where(Result.key.in_(cells))).all()
            assert sorted(r.key for r in rows) == sorted(cells), "not exactly one result per match"
            assert session.scalar(select(func.count()).select_from(Result)) == len(cells)
            return {r.key: r for r in rows}

    def artifacts(self) -> dict[str, str]:
        """The digest of every artifact (trained models, evaluation sets) by key."""
        with self.db.session() as session:
            rows = session.execute(select(Artifact.key, Artifact.data))
            return {key: hashlib.sha256(data).hexdigest() for key, data in rows}

    def names(self, result: Result) -> tuple[str, str]:
        """The names of a result's attack and defense."""
        with self.db.session() as session:
            versions = (session.get(PluginVersion, v) for v in (result.attack_version_id, result.defense_version_id))
            return tuple(v.plugin.name for v in versions)

    def by_attack(self, round_id: int) -> dict[str, list[Result]]:
        """The round's results by the name of their attack."""
        grouped: dict[str, list[Result]] = {}
        with self.db.session() as session:
            for result in self.results(round_id).values():
                name = session.get(PluginVersion, result.attack_version_id).plugin.name
                grouped.setdefault(name, []).append(result)
        return grouped

    def write_attack(self, name: str, code: str) -> Path:
        """An attack plugin folder with this module code."""
        return write_plugin(self.plugin_dir, name, "attack", code)


@contextmanager
def _cluster(home: Path, folder: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The arena of a test: a fresh PostgreSQL database, the tiny track, ``broker_url``, workers to start."""
    home.mkdir(parents=True)
    (home / "tracks.toml").write_text(TINY)
    with fresh_postgres_database() as database_url:
        monkeypatch.setenv("ARENA_DATABASE_URL", database_url)
        monkeypatch.setenv("ARENA_BROKER_URL", broker_url)
        settings = Settings.from_env()
        db = Database(database_url)
        db.upgrade()
        workers = Workers(folder, database_url, broker_url)
        try:
            yield Cluster(settings, db, load_tracks(home), workers, folder / "plugins")
        finally:
            workers.stop()
            db.dispose()


@pytest.fixture
def cluster(arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """An arena on a Redis database of its own (see :func:`services.redis_url`)."""
    with redis_url() as url, _cluster(arena_home, tmp_path, url, monkeypatch) as arena:
        yield arena


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may kill and start again."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def cluster_on_own_redis(
    own_redis: RedisServer, arena_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """An arena whose Redis the test may kill and start again."""
    with _cluster(arena_home, tmp_path, own_redis.url, monkeypatch) as arena:
        yield arena


def comparable(result: Result) -> tuple:
    """What must not depend on the executor: status, metrics (but times) and every per-sample record."""
    # times and the diagnostics' measures (float sums whose last bits follow the threads) are no judgement
    metrics = {k: v for k, v in result.metrics.items() if k not in ("attack_seconds", "input_gradient")}
    samples = {k: v.tolist() for k, v in unpack(result.samples).items()} if result.samples else None
    return result.status, result.error, metrics, samples


def test_two_workers_play_the_round_as_the_local_executor_does(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`arena round run --wait` through two workers, as a user runs it, against the local executor."""
    cluster.workers.start(2)
    # the same round in-process, in a SQLite database, with the same secret (so the same seeds)
    local = Database(f"sqlite:///{tmp_path / 'local.db'}")
    local.upgrade()
    local_settings = dataclasses.replace(cluster.settings, database_url=local.url, broker_url=None)
    reference = Cluster(local_settings, local, cluster.tracks, cluster.workers, cluster.plugin_dir)
    reference.record(*(REPO / "plugins" / p for p in BUILTINS))
    local_round = reference.open_round()
    monkeypatch.setenv("OMP_NUM_THREADS", str(THREADS))  # the sandboxes' (a zygote started from now on)
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # the substitute trains in this process
    try:
        local_executor.run_local(local, local_settings, cluster.tracks, local_round, progress=False)
    finally:
        torch.set_num_threads(threads)

    cluster.workers.wait_ready(2)
    monkeypatch.setenv("ARENA_BUILTINS", ",".join(Path(p).name for p in BUILTINS))
    out = CliRunner().invoke(main, ["round", "run", "--track", "tiny", "--wait", "--quiet"])
    with cluster.db.session() as session:
        (round_id,) = session.scalars(select(Round.id)).all()
    assert out.exit_code == 0, out.output + cluster.report(round_id)
    assert "jobs: {'done': 11}" in out.output and "round 1 - tiny - black-box" in out.output

    assert cluster.artifacts() == reference.artifacts(), "every model trained the same, bit for bit"
    expected, played = reference.results(local_round), cluster.results(round_id)
    assert played.keys() == expected.keys() and len(played) == 6
    assert {r.threat for r in played.values()} == {"white-box", "gray-box", "black-box"}
    for key, result in played.items():
        assert comparable(result) == comparable(expected[key]), (result.threat, cluster.names(result))
    ran = cluster.jobs(round_id)
    assert all(job.attempts == 1 for job in ran)
    assert {job.worker for job in ran} == set(cluster.workers.pids()), "both workers ran jobs"
    assert not list(tmp_path.glob("worker-*/secret")), "a worker needs no secret: seeds come with the jobs"


def test_a_worker_killed_mid_match_loses_no_job(cluster: Cluster) -> None:
    cluster.workers.start(2, "--lease-seconds", "3")
    slow = cluster.write_attack("slow", SLOW.format(seconds=3))
    cluster.record(slow, FGSM, UNDEFENDED)
    cluster.workers.wait_ready(2)
    round_id = cluster.open_round()
    cluster.run(round_id, wait=False)

    victim = _running_match(cluster, round_id, "slow")
    killed_at = time.monotonic()
    os.kill(cluster.workers.pids()[victim.worker], signal.SIGKILL)
    assert cluster.run(round_id) == {"done": 6}, cluster.report(round_id)

    job = next(j for j in cluster.jobs(round_id) if j.id == victim.id)
    assert job.attempts == 2 and job.state == "done" and job.error is None
    assert (job.started_at - victim.started_at).total_seconds() < 30, "redelivered promptly"
    assert all(j.attempts == 1 for j in cluster.jobs(round_id) if j.id != victim.id)
    assert all(r.status == "ok" for r in cluster.results(round_id).values())
    assert f"worker {victim.worker}: killed by SIGKILL" in cluster.workers.log()
    print(f"redelivered job restarted {time.monotonic() - killed_at:.1f} s after the kill")


def test_the_round_completes_after_redis_restarts_empty(cluster_on_own_redis: Cluster, own_redis: RedisServer) -> None:
    cluster = cluster_on_own_redis
    cluster.workers.start(2, "--lease-seconds", "3")
    slow = cluster.write_attack("slow", SLOW.format(seconds=2))
    cluster.record(slow, FGSM, UNDEFENDED)
    cluster.workers.wait_ready(2)
    round_id = cluster.open_round()
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(cluster.run, round_id)  # follows the round across the outage
        _running_match(cluster, round_id, "slow")
        own_redis.stop()  # every message, mark and lease is lost
        time.sleep(3)
        own_redis.start()
        assert follower.result(timeout=ROUND_SECONDS) == {"done": 6}, cluster.report(round_id)
    assert all(r.status == "ok" for r in cluster.results(round_id).values())


def test_a_crash_fails_only_its_own_job_with_a_reason(cluster: Cluster) -> None:
    """Plugins that segfault or exit take down only their sandbox; a job that takes down its worker process
    each time it runs (here the test kills it, as an out-of-memory killer would) fails after its attempts."""
    cluster.workers.start(2, "--lease-seconds", "3", "--max-attempts", "2")
    crashes = [cluster.write_attack(name, CRASH.format(body=body)) for name, body in CRASHES.items()]
    doomed = cluster.write_attack("doomed", SLOW.format(seconds=60))
    cluster.record(*crashes, doomed, FGSM, UNDEFENDED)
    cluster.workers.wait_ready(2)
    round_id = cluster.open_round()
    kills = 0
    with ThreadPoolExecutor(1) as pool:
        follower = pool.submit(cluster.run, round_id)
        while not follower.done():
            job = _find_running(cluster, round_id, "doomed")
            if job is not None and job.attempts > kills:
                os.kill(cluster.workers.pids()[job.worker], signal.SIGKILL)
                kills += 1
            time.sleep(0.2)
        assert follower.result() == {"done": 5, "failed": 3}, cluster.report(round_id)

    by_attack = cluster.by_attack(round_id)
    assert all(r.status == "ok" for r in by_attack["fgsm"])
    (segfault,), (exits,), (lost,) = by_attack["segfaults"], by_attack["exits"], by_attack["doomed"]
    assert "killed by signal SIGSEGV" in segfault.error
    assert "exited with status 3" in exits.error
    assert lost.error.startswith("gave up after 2 attempt(s); the last: attempt 2 was lost: its worker")
    assert kills == 2 and cluster.workers.log().count("killed by SIGKILL") == 2, "no crash but ours took a worker"


def test_round_run_sends_the_round_and_the_scheduler_keeps_it_moving(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`arena round run` with ARENA_BROKER_URL and without --wait: the jobs are sent, none is run here."""
    monkeypatch.setenv("ARENA_BUILTINS", "fgsm,undefended")
    runner = CliRunner()
    sent = runner.invoke(main, ["round", "run", "--track", "tiny", "--quiet"])
    assert sent.exit_code == 0, sent.output
    assert "`arena results` ranks the round once it is done" in sent.output
    with cluster.db.session() as session:
        (round_id,) = session.scalars(select(Round.id).where(Round.status == "running")).all()
    jobs = cluster.jobs(round_id)
    training = [j.id for j in jobs if j.kind != "match"]
    keys = dispatch.Keys(cluster.settings.broker_url)
    assert set(keys.sent([j.id for j in jobs])) == set(training), "training is sent; matches wait for it"
    assert all(j.state == "queued" and j.attempts == 0 for j in jobs)

    swept = runner.invoke(main, ["scheduler", "--once"])
    assert swept.exit_code == 0 and f"round 1: {len(jobs)} queued" in swept.output, swept.output
    keys.redis.close()


def _find_running(cluster: Cluster, round_id: int, attack: str) -> Job | None:
    """The running match of ``attack``, if any."""
    with cluster.db.session() as session:
        for job in session.scalars(select(Job).where(Job.round_id == round_id, Job.state == "running")):
            if job.kind == "match" and session.get(PluginVersion, job.params["attack"]).plugin.name == attack:
                return job
    return None


def _running_match(cluster: Cluster, round_id: int, attack: str, timeout: float = 120) -> Job:
    """Wait until the match of ``attack`` runs (a worker claimed it); return its job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _find_running(cluster, round_id, attack)
        if job is not None:
            return job
        time.sleep(0.2)
    pytest.fail(f"the match of {attack} never started:\n{cluster.workers.log()[-3000:]}")
