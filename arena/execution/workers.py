"""The commands of distributed mode: ``arena worker`` (Celery workers, one per GPU) and ``arena scheduler``.

``arena worker`` starts one Celery worker process per visible GPU, pinned with ``CUDA_VISIBLE_DEVICES``
(or one CPU worker where there is none), each with a thread pool of one (see :mod:`arena.execution.tasks`), and
restarts a worker process that dies. ``arena scheduler`` sweeps every running round: it sends the jobs
that became ready and takes back those of lost workers (:class:`arena.execution.dispatch.Dispatcher`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from arena.config import Settings, with_process_defaults
from arena.execution.rounds import recorded_tracks
from arena.store import Database, Round

if TYPE_CHECKING:
    from arena.execution.dispatch import Dispatcher
    from arena.rules.tracks import Track

#: seconds to wait before restarting a worker that died, doubled after each quick death, at most this
RESTART_MAX_SECONDS = 30.0
#: a worker that ran this long before dying is restarted at once
HEALTHY_SECONDS = 60.0


@dataclass
class WorkerProcess:
    """One Celery worker process of ``arena worker``: its node name, queues, environment and process."""

    name: str
    queues: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    done: bool = False
    argv: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start (or restart) the process."""
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started, self.restart_at = time.monotonic(), None
        click.echo(f"worker {self.name}: started (pid {self.process.pid}, queues {','.join(self.queues)})")


def visible_gpus() -> list[tuple[str, str]]:
    """The GPUs this process may use: (CUDA_VISIBLE_DEVICES id, name) pairs."""
    import torch  # only here: `arena worker --help` stays fast

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = listed[:count] if listed else [str(i) for i in range(count)]
    return [(device, torch.cuda.get_device_name(i)) for i, device in enumerate(ids)]


def plan_workers(
    gpus: list[tuple[str, str]], count: int | None, queues: str | None, tag: str, environ: dict[str, str]
) -> list[WorkerProcess]:
    """One worker per GPU (the first ``count``), or ``count`` (default 1) CPU workers where there is none.

    Each worker's share of the cores is its OpenMP thread count (unless ``OMP_NUM_THREADS`` is set): GPU workers
    use the CPU too (hosts of small models classify there, see :func:`arena.play.hosts.device_for`)."""
    host = socket.gethostname()
    if gpus:
        if count is not None and count > len(gpus):
            raise click.UsageError(f"--workers {count}: only {len(gpus)} GPU(s) visible")
        default = ["gpu", "cpu"]
        gpus = gpus[: count or None]
        threads = _cpu_share(len(gpus), environ)
        plans = [(f"gpu{i}.{tag}@{host}", {"CUDA_VISIBLE_DEVICES": d} | threads) for i, (d, _) in enumerate(gpus)]
    else:
        n = count or 1
        default = ["cpu", "gpu"]  # no GPU here: this CPU does the GPU queue's work too
        cpu = {"CUDA_VISIBLE_DEVICES": ""} | _cpu_share(n, environ)
        plans = [(f"cpu{i}.{tag}@{host}", cpu) for i in range(n)]
    served = [q.strip() for q in queues.split(",") if q.strip()] if queues else default
    return [WorkerProcess(name, served, environ | extra) for name, extra in plans]


def _cpu_share(workers: int, environ: dict[str, str]) -> dict[str, str]:
    """The OpenMP thread count of each of ``workers`` workers on this machine: the one set, or its cores shared."""
    return {"OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))}


def celery_argv(worker: WorkerProcess, loglevel: str, options: list[str]) -> list[str]:
    """The command line of one worker process: a thread pool of one (see :mod:`arena.execution.tasks`), without the
    working directory on its ``sys.path`` (a sandbox's view would bind it)."""
    return [
        sys.executable, "-P", "-m", "celery", "--app", "arena.execution.tasks", "worker",  # -P: not the cwd
        "--pool", "threads", "--concurrency", "1",
        "--hostname", worker.name, "--queues", ",".join(worker.queues),
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", *options,
    ]  # fmt: skip


@click.command()
@click.option("--workers", "count", type=click.IntRange(1), help="How many workers [one per visible GPU, else 1].")
@click.option("--queues", help="Comma-separated queues to serve [gpu,cpu with a GPU; cpu,gpu without].")
@click.option(
    "--lease-seconds", type=click.FloatRange(1), help="How long a lease on a running job lasts unrefreshed [15]."
)
@click.option("--max-attempts", type=click.IntRange(1), help="How many times a job may start [3].")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    count: int | None, queues: str | None, lease_seconds: float | None, max_attempts: int | None, loglevel: str
) -> None:
    """Run Celery workers for the arena's jobs: one per visible GPU, or one on the CPU."""
    settings = Settings.from_env()
    if not settings.broker_url:
        raise click.UsageError("set ARENA_BROKER_URL to the broker (redis://host:6379/0)")
    gpus = visible_gpus()
    if gpus:
        click.echo(f"found {len(gpus)} GPU(s): " + "; ".join(f"{device}: {name}" for device, name in gpus))
    else:
        click.echo("found no GPU (torch.cuda.is_available() is False): starting CPU worker(s)")
    click.echo(f"broker: {_redacted(settings.broker_url)}; database: {_redacted(settings.database_url)}")
    options = [] if lease_seconds is None else ["--lease-seconds", str(lease_seconds)]
    options += [] if max_attempts is None else ["--max-attempts", str(max_attempts)]
    workers = plan_workers(gpus, count, queues, str(os.getpid()), with_process_defaults(os.environ))
    for w in workers:
        w.argv = celery_argv(w, loglevel, options)
    _supervise(workers)


def _supervise(workers: list[WorkerProcess]) -> None:
    """Run the workers; restart one that dies; on SIGTERM or SIGINT, stop them all (warm shutdown)."""
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for w in workers:
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for w in workers:
        w.start()
    while not stopping and not all(w.done for w in workers):
        time.sleep(0.5)
        for w in workers:
            _check(w)
    for w in workers:
        if w.process is not None:
            w.process.wait()
    click.echo("workers stopped")


def _check(w: WorkerProcess) -> None:
    now = time.monotonic()
    if w.restart_at is not None:
        if now >= w.restart_at:
            w.start()
        return
    if w.done or w.process is None or (code := w.process.poll()) is None:
        return
    if code == 0:
        click.echo(f"worker {w.name}: stopped")
        w.done = True
        return
    ran = now - w.started
    w.failures = 0 if ran >= HEALTHY_SECONDS else w.failures + 1
    delay = min(RESTART_MAX_SECONDS, 2.0 ** (w.failures - 1)) if w.failures else 0.0
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    click.echo(f"worker {w.name}: {how} after {ran:.0f} s; restarting in {delay:.0f} s", err=True)
    w.restart_at = now + delay


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy parses: show only its scheme
        return url.split("://", 1)[0] + "://..."


@click.command()
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.5), help="Seconds between sweeps.")
@click.option("--once", is_flag=True, help="Sweep once and exit.")
def scheduler(interval: float, once: bool) -> None:
    """Keep running rounds moving: send ready jobs, take back those of lost workers (distributed mode)."""
    from arena.execution import dispatch, tasks  # Celery and Redis are optional dependencies: imported when used

    settings = Settings.from_env()
    if not settings.broker_url:
        raise click.UsageError("set ARENA_BROKER_URL to the broker (redis://host:6379/0)")
    db = Database(settings.database_url)
    db.upgrade()
    keys = dispatch.Keys(settings.broker_url)
    dispatcher = dispatch.Dispatcher(db, tasks.create_app(settings.broker_url), keys, settings)
    click.echo(f"scheduler: sweeping running rounds every {interval:g} s")
    seen: dict[int, str] = {}
    while True:
        try:
            _sweep_all(db, dispatcher, recorded_tracks(db), seen)
        except (*dispatch.BROKER_ERRORS, OperationalError) as exc:
            click.echo(f"scheduler: cannot reach the broker or the database ({exc}); trying again", err=True)
        if once:
            return
        time.sleep(interval)


def _sweep_all(db: Database, dispatcher: Dispatcher, tracks: dict[str, Track], seen: dict[int, str]) -> None:
    """Sweep every running round; print what changed."""
    with db.session() as session:
        rounds = session.execute(select(Round.id, Round.number).where(Round.status == "running")).all()
    for round_id, number in rounds:
        states = dispatcher.sweep(round_id, tracks)
        line = f"round {number}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        if seen.get(round_id) != line:
            click.echo(line)
            seen[round_id] = line
