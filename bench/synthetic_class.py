"""A synthetic class: many trivial attacks and defenses, so that the arena's machinery is what is measured.

Writes ``--attacks`` attack plugins (a random signed step of the full budget, no model) and ``--defenses``
defense plugins (a linear model, one pass of Adam), each of a team of its own, plays one local round of all
of them on a track under the three threat models, and prints where the time went: validation (each
plugin's sandboxed check and smoke match, as a push gets), planning, training, matches, and per match the
match's own wall time against its job's (the difference: the database and the executor).

    python bench/synthetic_class.py [--attacks 10] [--defenses 10] [--track digits]...

The issue's class is 50 x 50 x 3 threats x 2 tracks = 15,000 matches (``--attacks 50 --defenses 50 --track
digits --track digits-coarse``, a second digits track at eps 0.1 written to the bench's tracks.toml); smaller
sizes scale by the matches per second printed (the cost per match does not grow with the queue: see
bench/dispatch_cost.py). ``--workers N`` plays the round through N ``arena worker`` processes over Redis
instead of the local executor, on ``--database`` (PostgreSQL at scale; emptied first) or a fresh SQLite file:

    python bench/synthetic_class.py --attacks 50 --defenses 50 --track digits --track digits-coarse \\
        --workers 2 --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from celery_throughput import Run
from sqlalchemy import select

from arena.config import Settings
from arena.execution import follow, local
from arena.plan import planner, versions
from arena.rules.tracks import get_track, load_tracks
from arena.store import Database, Job, Result

ATTACK = '''
import torch

from arena import Attack, hookimpl


class Step{n}(Attack):
    """A random signed step of the whole budget (attack {n})."""

    norms = ("linf", "l2")
    threats = ("white-box", "gray-box", "black-box")

    def run(self, target, x, y, budget):
        noise = torch.randn(x.shape, generator=budget.generator).to(x.device)
        return (x + budget.eps * {scale} * noise.sign()).clamp(0, 1)


@hookimpl
def arena_attacks():
    return [Step{n}]
'''
DEFENSE = '''
import torch
import torch.nn.functional as F
from torch import nn

from arena import Defense, hookimpl


class Linear{n}(Defense):
    """A linear model, one pass of Adam (defense {n})."""

    def train(self, ctx):
        model = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(ctx.input_shape).prod()), ctx.num_classes))
        optimizer = torch.optim.Adam(model.parameters(), lr={lr})
        for x, y in ctx.batches(128):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return model.eval()


@hookimpl
def arena_defenses():
    return [Linear{n}]
'''


def write(folder: Path, kind: str, n: int) -> None:
    """Plugin number ``n`` of ``kind``, of team ``team-n``."""
    name = f"{kind}-{n:03d}"
    path = folder / f"{kind}s" / name
    path.mkdir(parents=True)
    manifest = f'name = "{name}"\nkind = "{kind}"\nteam = "team-{n:03d}"\nsummary = "synthetic"\n'
    if kind == "attack":
        manifest += 'norms = ["linf", "l2"]\nthreats = ["white-box", "gray-box", "black-box"]\n'
        code = ATTACK.format(n=n, scale=1.0 - n / 1000)
    else:
        code = DEFENSE.format(n=n, lr=1e-2 + n / 1e4)
    (path / "plugin.toml").write_text(manifest)
    (path / f"{name.replace('-', '_')}.py").write_text(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", type=int, default=10)
    parser.add_argument("--defenses", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="arena workers over Redis [0: the local executor]")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14", help="with --workers (flushed first)")
    parser.add_argument("--database", help="with --workers: a database URL to empty and use [fresh SQLite]")
    parser.add_argument(
        "--track", action="append", help="a track, repeatable [digits]; digits-coarse: digits at eps 0.1"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="arena-class-"))
    folder = root / "plugins"
    for n in range(args.attacks):
        write(folder, "attack", n)
    for n in range(args.defenses):
        write(folder, "defense", n)
    env = {"ARENA_HOME": str(root / "home"), "ARENA_PLUGIN_DIRS": str(folder), "ARENA_BUILTINS": ""}
    if os.environ.get("ARENA_DATA_DIR"):
        env["ARENA_DATA_DIR"] = os.environ["ARENA_DATA_DIR"]
    (root / "home").mkdir(parents=True)
    (root / "home" / "tracks.toml").write_text('[tracks.digits-coarse]\nbase = "digits"\neps = 0.1\n')
    cluster = None
    if args.workers:
        cluster = Run(root, args.broker, args.database, root / "home")  # empties the database and the broker
        env |= {"ARENA_DATABASE_URL": cluster.database, "ARENA_BROKER_URL": args.broker}
        cluster.start_workers(args.workers)
    settings = Settings.from_env(env)
    db = Database(settings.database_url)
    db.upgrade()
    known = load_tracks(settings.home)
    tracks = {name: get_track(name, known) for name in args.track or ["digits"]}
    phases: dict[str, float] = {}

    started = time.perf_counter()
    versions.record_plugins(db, settings)
    phases["validation (sync)"] = time.perf_counter() - started
    started = time.perf_counter()
    round_id = planner.open_round(db, list(tracks.values()))
    plan = planner.plan_round(db, settings, round_id, tracks)
    phases["planning"] = time.perf_counter() - started
    started = time.perf_counter()
    if cluster is not None:
        states = follow.run_celery(db, settings, tracks, round_id, progress=False, interval=0.5)
        cluster.stop()
    else:
        states = local.run_local(db, settings, tracks, round_id, progress=False)
    phases["jobs (training and matches)"] = time.perf_counter() - started
    phases["the whole round"] = sum(phases.values())

    with db.session() as session:
        jobs = session.execute(
            select(Job.kind, Job.key, Job.started_at, Job.finished_at, Job.worker).where(Job.round_id == round_id)
        ).all()
        walls = dict(session.execute(select(Result.key, Result.wall_time)).all())
    busy: dict[str, float] = {}
    overhead = []
    by_worker: dict[str, list] = {}
    for kind, key, begun, ended, worker in jobs:
        if begun and ended:
            by_worker.setdefault(worker, []).append((begun, ended))
        seconds = (ended - begun).total_seconds() if begun and ended else 0.0
        busy[kind] = busy.get(kind, 0.0) + seconds
        if kind == "match" and key in walls and walls[key] is not None:
            overhead.append(seconds - walls[key])
    matches = sum(1 for kind, *_ in jobs if kind == "match")
    gaps = []  # from a job's end to the next one's start on the same worker: acknowledging, fetching, claiming
    for runs in by_worker.values():
        runs.sort()
        gaps += [(begun - ended).total_seconds() for (_, ended), (begun, _) in itertools.pairwise(runs)]
    where = f"{args.workers} arena workers, {settings.database_url.split(':')[0]}" if args.workers else "local executor"
    print(f"{args.attacks} attacks x {args.defenses} defenses x 3 threats on {', '.join(tracks)} ({where}):")
    print(f"  {plan.cells_line()}")
    print(f"jobs: {dict(states)}")
    print("| phase | seconds |")
    print("|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.1f} |")
    for kind, seconds in sorted(busy.items()):
        print(f"| jobs of kind {kind} (sum) | {seconds:.1f} |")
    match_seconds = busy.get("match", 0.0)
    print(f"matches: {matches}, {matches / match_seconds:.1f} per second of match jobs" if match_seconds else "")
    spans = [(begun, ended) for kind, _, begun, ended, _ in jobs if kind == "match" and begun and ended]
    if spans:
        phase = (max(e for _, e in spans) - min(b for b, _ in spans)).total_seconds()
        print(f"match phase (first match started to last finished): {phase:.0f} s, {matches / phase:.1f} matches/s")
    if overhead:
        beyond = statistics.median(overhead) * 1000
        print(f"per match, the job beyond the match itself (database, executor): median {beyond:.0f} ms")
        match_wall = statistics.median(w for w in walls.values() if w is not None) * 1000
        print(f"per match, the match itself (its wall time): median {match_wall:.0f} ms")
    if gaps:
        print(f"between a worker's jobs (acknowledge, fetch, claim): median {statistics.median(gaps) * 1000:.0f} ms")
    db.dispose()


if __name__ == "__main__":
    main()
