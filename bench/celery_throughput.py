"""Distributed mode on this machine: throughput of one versus two Celery workers, dispatch overhead, redelivery.

Plays the same round (built-in plugins, fresh database each time) three ways: in-process (the local
executor), through one `arena worker`, and through two; then kills the worker running a slow match
with SIGKILL and times how long the job takes to start again elsewhere.

* throughput: matches per minute over the round's match phase (first match started to last finished),
  and the whole round's wall time;
* dispatch overhead: on the one-worker run, the idle gap between one job's end and the next one's
  start on the worker (acknowledgement, sending what became ready, fetching, lease, claim), against the
  bare job time (the job's own start to end, as the database records it);
* redelivery: from the SIGKILL to the job's next start (the lease must expire, then a sweep sends it).

    python bench/celery_throughput.py [--track digits] [--broker redis://127.0.0.1:6379/14]
                                      [--database postgresql+psycopg://postgres@127.0.0.1:5432/DB]
                                      [--lease-seconds 15] [--redelivery-only]

Without ``--database`` each run gets a fresh SQLite file that the workers share. The broker's database
is flushed before each run: give it one of its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import select, text

from arena.config import Settings
from arena.contract import plugins
from arena.execution import follow, local, tasks
from arena.plan import planner, versions
from arena.rules.tracks import load_tracks
from arena.store import Database, Job, PluginVersion

ROOT = Path(__file__).resolve().parents[1]
ARENA = Path(sys.executable).parent / "arena"
BUILTINS = ("attacks/fgsm", "attacks/simba", "attacks/transfer", "defenses/undefended", "defenses/fgsm-adv-training")
SLOW = """
import time
from arena import Attack, hookimpl

class Slow(Attack):
    threats = ("white-box",)

    def run(self, target, x, y, budget):
        time.sleep(10)
        return x.clone()

@hookimpl
def arena_attacks():
    return [Slow]
"""


class Run:
    """One configuration: a fresh database and arena home, and the workers it started."""

    def __init__(self, folder: Path, broker: str, database: str | None, home: Path) -> None:
        self.folder, self.broker, self.home = folder, broker, home
        self.database = database or f"sqlite:///{folder / 'arena.db'}"
        if database and database.startswith("postgresql"):
            self._reset_postgres()
        redis.Redis.from_url(broker).flushdb()
        self.db = Database(self.database)
        self.db.upgrade()
        self.settings = Settings.from_env({"ARENA_HOME": str(home), "ARENA_DATABASE_URL": self.database,
                                           "ARENA_BROKER_URL": broker})  # fmt: skip
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _reset_postgres(self) -> None:
        db = Database(self.database)
        with db.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        db.dispose()

    def start_workers(self, count: int, *options: str) -> None:
        env = {"PATH": os.environ["PATH"], "ARENA_DATABASE_URL": self.database, "ARENA_BROKER_URL": self.broker}
        env |= {key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}  # the code to compare with
        for i in range(count):
            log = self.folder / f"worker-{i}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [str(ARENA), "worker", "--loglevel", "WARNING", *options],
                    env=env | {"ARENA_HOME": str(self.folder / f"worker-{i}")},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.workers.append((process, log))
        app = tasks.create_app(self.broker)
        while len(app.control.ping(timeout=1.0)) < count:
            pass
        app.close()

    def worker_pids(self) -> dict[str, int]:
        pids = {}
        for _, log in self.workers:
            for line in log.read_text().splitlines():
                if ": started (pid " in line:
                    name, pid = line.split()[1].rstrip(":"), line.split("(pid ")[1].split(",")[0]
                    pids[name] = int(pid)
        return pids

    def stop(self) -> None:
        for process, _ in self.workers:
            process.terminate()
        for process, _ in self.workers:
            process.wait(timeout=60)
        self.db.dispose()

    def play(self, folders: list[Path], track: str, celery: bool) -> tuple[int, float]:
        """Record the plugins, open a round on ``track`` and play it; return its id and wall time."""
        for folder in folders:
            with self.db.session() as session:
                versions.record_version(session, plugins.read_folder(folder), self.settings)
        tracks = load_tracks(self.home)
        round_id = planner.open_round(self.db, [tracks[track]])
        planner.plan_round(self.db, self.settings, round_id, tracks)
        started = time.perf_counter()
        if celery:
            follow.run_celery(self.db, self.settings, tracks, round_id, progress=False, interval=0.5)
        else:
            local.run_local(self.db, self.settings, tracks, round_id, progress=False)
        return round_id, time.perf_counter() - started

    def jobs(self, round_id: int) -> list[Job]:
        with self.db.session() as session:
            return list(session.scalars(select(Job).where(Job.round_id == round_id).order_by(Job.started_at)))


def match_rate(jobs: list[Job]) -> float:
    """Matches per minute over the match phase."""
    matches = [j for j in jobs if j.kind == "match"]
    span = max(j.finished_at for j in matches) - min(j.started_at for j in matches)
    return 60 * len(matches) / span.total_seconds()


def gaps(jobs: list[Job]) -> list[float]:
    """Idle seconds between consecutive jobs of each worker."""
    by_worker: dict[str, list[Job]] = {}
    for job in jobs:
        by_worker.setdefault(job.worker, []).append(job)
    return [
        (b.started_at - a.finished_at).total_seconds()
        for runs in by_worker.values()
        for a, b in zip(runs, runs[1:], strict=False)
    ]


def redelivery(run: Run, track: str, lease_seconds: float) -> float:
    """Seconds from SIGKILL of the worker running a slow match to the match's next start."""
    run.start_workers(2, "--lease-seconds", str(lease_seconds))
    folder = run.folder / "plugins" / "slow"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text('name = "slow"\nkind = "attack"\nteam = "bench"\nsummary = "sleeps"\n')
    (folder / "slow.py").write_text(SLOW)
    for f in (folder, ROOT / "plugins" / "defenses" / "undefended"):
        with run.db.session() as session:
            versions.record_version(session, plugins.read_folder(f), run.settings)
    tracks = load_tracks(run.home)
    round_id = planner.open_round(run.db, [tracks[track]])
    planner.plan_round(run.db, run.settings, round_id, tracks)
    follow.run_celery(run.db, run.settings, tracks, round_id, wait=False)
    while True:
        with run.db.session() as session:
            running = [
                j
                for j in session.scalars(select(Job).where(Job.round_id == round_id, Job.state == "running"))
                if j.kind == "match" and session.get(PluginVersion, j.params["attack"]).plugin.name == "slow"
            ]
        if running:
            break
        time.sleep(0.1)
    victim = running[0]
    killed = time.time()
    os.kill(run.worker_pids()[victim.worker], signal.SIGKILL)
    follow.run_celery(run.db, run.settings, tracks, round_id, progress=False, interval=0.5)
    (job,) = [j for j in run.jobs(round_id) if j.id == victim.id]
    assert job.attempts == 2, job.error
    return job.started_at.timestamp() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="digits")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--database", help="SQLAlchemy URL of a database to empty and use [fresh SQLite files]")
    parser.add_argument("--lease-seconds", type=float, default=15.0)
    parser.add_argument("--redelivery-only", action="store_true", help="Measure only the redelivery.")
    args = parser.parse_args()
    folders = [ROOT / "plugins" / p for p in BUILTINS]
    home = Path(tempfile.mkdtemp(prefix="arena-bench-home-"))  # one secret: the same seeds in every run
    results = {}
    for label, workers in () if args.redelivery_only else (("local", 0), ("1 worker", 1), ("2 workers", 2)):
        run = Run(Path(tempfile.mkdtemp(prefix="arena-bench-")), args.broker, args.database, home)
        try:
            if workers:
                run.start_workers(workers)
            round_id, wall = run.play(folders, args.track, celery=bool(workers))
            results[label] = (wall, run.jobs(round_id))
        finally:
            run.stop()
        jobs = results[label][1]
        busy = sum((j.finished_at - j.started_at).total_seconds() for j in jobs)
        print(
            f"{label:>9}: round {wall:6.1f} s, {len(jobs)} jobs ({busy:5.1f} s of job time), "
            f"{match_rate(jobs):6.1f} matches/min"
        )
    if results:
        bare = [(j.finished_at - j.started_at).total_seconds() for j in results["1 worker"][1]]
        idle = gaps(results["1 worker"][1])
        print(
            f"dispatch overhead (1 worker): median gap between jobs {1000 * statistics.median(idle):.0f} ms "
            f"(mean {1000 * statistics.mean(idle):.0f} ms) against a median bare job of "
            f"{1000 * statistics.median(bare):.0f} ms; round {results['1 worker'][0] - results['local'][0]:+.1f} s "
            "against the local executor"
        )
    run = Run(Path(tempfile.mkdtemp(prefix="arena-bench-")), args.broker, args.database, home)
    try:
        seconds = redelivery(run, args.track, args.lease_seconds)
    finally:
        run.stop()
    print(f"redelivery: the killed worker's match started again {seconds:.1f} s after the SIGKILL "
          f"(lease {args.lease_seconds:g} s)")  # fmt: skip


if __name__ == "__main__":
    main()
