"""Board latency under load: the overview, the matrix and the API with a class-sized database.

Builds a database of ``--teams`` teams (default 50), each with one attack and one defense, played on two
tracks (digits, 300 samples; mnist-linf, 1000 samples) under three threats: every attack against every
defense, 15,000 results for 50 teams. Each result carries per-sample records and a gallery made by the
referee's own functions (``arena.rules.referee.metrics`` and ``gallery``) from synthetic but realistic outcomes
(defenses of varied strength and clean accuracy, attacks of varied power, harder and easier samples).
Round 1 is done and published (``arena.plan.planner.publish_round``: scored once, its standings kept); in round 2
one team pushed a new attack, so round 2 reuses every result but that attack's 300 (a push costs one row per
board). Round 2 is done, not published: the public's front page
shows round 1 with round 2's progress above it.

Then it serves the board as ``arena serve`` does (gunicorn, ``--workers`` processes forked from one loaded
app) on 127.0.0.1 in a child process, times the first view of each page after the start (scoring from the
stored records), warms every process, and measures the median and 95th-percentile latency of each page
under ``--clients`` concurrent clients (default 32), ``--requests`` requests each.

    python bench/board_latency.py                 # 50 teams, 32 clients
    python bench/board_latency.py --teams 10      # a quick run
    python bench/board_latency.py --database-url postgresql+psycopg://postgres@127.0.0.1/test  # an empty db
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import insert

from arena.plan import planner
from arena.rules import referee
from arena.rules.hookspecs import THREATS
from arena.rules.tracks import TRACKS
from arena.store import Database, Plugin, PluginVersion, Result, Round, RoundEntry, RoundMatch, Team, TrackRow
from arena.store.records import pack

BENCH_TRACKS = ("digits", "mnist-linf")
#: how much of its power an attack keeps under each threat model
THREAT_POWER = {"white-box": 1.0, "gray-box": 0.8, "black-box": 0.5}
BATCH = 500


# --------------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------------


def build(db: Database, teams: int, seed: int = 0) -> dict[str, float]:
    """Write the two rounds; return how many rows and how long it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    attacks, defenses = _plugins(db, teams)
    improved = _new_version(db, attacks[0])
    power = {a: rng.uniform(0.1, 0.95) for a in [*attacks, improved]}
    strength = {d: rng.uniform(0.05, 0.9) for d in defenses}
    clean = {d: rng.uniform(0.85, 0.995) for d in defenses}
    with db.session() as s:
        s.add_all(TrackRow(name=name, config=TRACKS[name].config()) for name in BENCH_TRACKS)
        first = Round(number=1, tracks=list(BENCH_TRACKS), status="done", finished_at=_now())
        second = Round(number=2, tracks=list(BENCH_TRACKS), status="done", finished_at=_now())
        s.add_all([first, second])
        s.flush()
        s.add_all(RoundEntry(round_id=first.id, plugin_version_id=v) for v in [*attacks, *defenses])
        s.add_all(RoundEntry(round_id=second.id, plugin_version_id=v) for v in [improved, *attacks[1:], *defenses])
        rounds = {first.id: attacks, second.id: [improved, *attacks[1:]]}
        first_id = first.id
    results = 0
    for name in BENCH_TRACKS:
        track = TRACKS[name]
        difficulty = rng.uniform(0, 1, track.eval_size)
        index = np.sort(rng.choice(10_000, track.eval_size, replace=False)).astype(np.int64)
        labels = rng.integers(0, 10, track.eval_size)
        x = _images(rng, track.eval_size, track.input_shape)
        for threat in THREATS:
            for defense in defenses:
                clean_ok = rng.uniform(0, 1, track.eval_size) < clean[defense]
                rows = []
                for attack in [*attacks, improved]:
                    chance = power[attack] * THREAT_POWER[threat] * (1 - strength[defense]) * (0.5 + difficulty)
                    broken = clean_ok & (rng.uniform(0, 1, track.eval_size) < chance)
                    rows.append(_result(rng, track, threat, attack, defense, index, labels, x, clean_ok, broken))
                _insert(db, rows, rounds, name, threat)
                results += len(rows)
    built = time.perf_counter()
    planner.publish_round(db, first_id)  # as `arena round publish 1`: scored once, its standings kept
    return {
        "teams": teams,
        "results": results,
        "seconds": built - started,
        "publish_seconds": time.perf_counter() - built,
    }


def _plugins(db: Database, teams: int) -> tuple[list[int], list[int]]:
    attacks, defenses = [], []
    with db.session() as s:
        for t in range(teams):
            team = Team(name=f"team-{t:02d}", repo_url=f"https://git.example.org/team-{t:02d}.git")
            for kind, ids in (("attack", attacks), ("defense", defenses)):
                plugin = Plugin(team=team, name=f"{kind}-{t:02d}", kind=kind)
                version = PluginVersion(
                    plugin=plugin,
                    content_hash=os.urandom(32).hex(),
                    commit=os.urandom(20).hex(),
                    source=team.repo_url,
                    archive=b"",
                    manifest={"name": plugin.name, "kind": kind, "summary": f"{kind} of team {t}"},
                    valid=True,
                    status="valid",
                )
                s.add(version)
                s.flush()
                ids.append(version.id)
    return attacks, defenses


def _new_version(db: Database, version_id: int) -> int:
    with db.session() as s:
        old = s.get(PluginVersion, version_id)
        new = PluginVersion(
            plugin_id=old.plugin_id,
            content_hash=os.urandom(32).hex(),
            commit=os.urandom(20).hex(),
            source=old.source,
            archive=b"",
            manifest=old.manifest,
            valid=True,
            status="valid",
        )
        s.add(new)
        s.flush()
        return new.id


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Digit-like images: dark, with a few bright strokes."""
    x = np.zeros((n, *shape), np.float32)
    strokes = rng.uniform(0, 1, x.shape) < 0.2
    x[strokes] = rng.uniform(0.5, 1.0, int(strokes.sum()))
    return torch.from_numpy(x)


def _result(rng, track, threat, attack, defense, index, labels, x, clean_ok, broken) -> dict:  # noqa: ANN001
    n = track.eval_size
    survived = clean_ok & ~broken
    wrong = (labels + rng.integers(1, 10, n)) % 10
    sign = np.sign(rng.uniform(-1, 1, x.shape)).astype(np.float32)
    x_adv = (x + torch.from_numpy(sign * track.eps * broken.reshape(-1, *([1] * (x.dim() - 1))))).clamp(0, 1)
    norms = referee.perturbation_norms(x_adv, x)
    records = {
        "label": labels,
        "target": np.full(n, -1),
        "clean_pred": np.where(clean_ok, labels, wrong),
        "adv_pred": np.where(survived, labels, wrong),
        "clean_correct": clean_ok,
        "clean_rejected": np.zeros(n, bool),
        "adv_correct": survived,
        "adv_rejected": np.zeros(n, bool),
        "survived": survived,
        "success": broken,
        "target_hit": np.zeros(n, bool),
        "violated": np.zeros(n, bool),
        **{name: value.numpy() for name, value in norms.items()},
    }
    queries = int(rng.integers(0, track.max_queries)) * n if threat == "black-box" else 0
    metrics = referee.metrics(records, False, queries, float(rng.uniform(0.5, 30)), 1)
    return {
        "key": os.urandom(32).hex(),
        "attack_version_id": attack,
        "defense_version_id": defense,
        "track": track.name,
        "threat": threat,
        "seed": 0,
        "referee_version": referee.REFEREE_VERSION,
        "status": "ok",
        "log_tail": "",
        "metrics": metrics | {"norm": track.norm, "eps": track.eps, "targeted": False},
        "samples": pack(records | {"index": index}),
        "gallery": pack(referee.gallery(x, x_adv, records)),
        "wall_time": metrics["attack_seconds"] + 1.0,
        "created_at": _now(),
    }


def _insert(db: Database, rows: list[dict], rounds: dict[int, list[int]], track: str, threat: str) -> None:
    with db.session() as s:
        s.execute(insert(Result), rows)
        cells = [
            {
                "round_id": round_id,
                "result_key": row["key"],
                "attack_version_id": row["attack_version_id"],
                "defense_version_id": row["defense_version_id"],
                "track": track,
                "threat": threat,
            }
            for round_id, attacks in rounds.items()
            for row in rows
            if row["attack_version_id"] in attacks
        ]
        s.execute(insert(RoundMatch), cells)


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# The server and its clients
# --------------------------------------------------------------------------------------------------


def serve(database_url: str, port: int, workers: int) -> None:
    """Serve the board on 127.0.0.1:``port`` with ``workers`` gunicorn processes (the child process)."""
    from leaderboard import create_app
    from leaderboard.server import serve as run_server

    logging.getLogger("gunicorn.error").setLevel(logging.WARNING)
    home = tempfile.mkdtemp(prefix="board-bench-home-")
    app = create_app({"DATABASE_URL": database_url, "ARENA_HOME": home})
    run_server("127.0.0.1", port, workers, app, access_log=False)


def get(port: int, path: str) -> tuple[int, int, float]:
    """One GET on a fresh connection: status, body size, seconds."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return response.status, len(body), time.perf_counter() - started


def load(port: int, path: str, clients: int, requests: int) -> list[float]:
    """``clients`` threads each GET ``path`` ``requests`` times; the latencies in seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            status, _, seconds = get(port, path)
            with lock:
                latencies.append(seconds)
                if status != 200:
                    errors.append(f"{path}: HTTP {status}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return latencies


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _started(database_url: str, workers: int) -> Iterator[tuple[int, subprocess.Popen]]:
    port = _free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", database_url, str(port), str(workers)])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(port, "/api/")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise RuntimeError("the board did not start") from None
                time.sleep(0.2)
        yield port, child
    finally:
        child.terminate()
        child.wait(timeout=30)


def _rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` and its children (gunicorn's processes), in MiB."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for each in [pid, *(int(c) for c in children.read_text().split())]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10, help="requests per client and page")
    parser.add_argument("--database-url", help="an empty database to fill (default: SQLite in a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="measure --database-url as it is, already filled")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1, help="server processes")
    parser.add_argument("--serve", nargs=3, metavar=("URL", "PORT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="board-bench-") as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'arena.db'}"
        db = Database(url)
        db.upgrade()
        if args.reuse:
            with db.session() as s:
                built = {"teams": s.query(Team).count(), "results": s.query(Result).count(), "seconds": 0.0}
        else:
            built = build(db, args.teams)
        db.dispose()
        print(f"{built['results']} results of {built['teams']} teams, built in {built['seconds']:.0f} s ({url})")
        if "publish_seconds" in built:
            print(f"publishing round 1 (scored once, its standings kept): {built['publish_seconds']:.1f} s")
        figures = {"database": built, "clients": args.clients, "requests_per_client": args.requests, "pages": {}}
        matrix = "track=mnist-linf&threat=white-box"
        pages = {
            "front page (round 1, round 2 above)": "/",
            "overview (round 1, published)": "/?round=1",
            "overview (round 2, unpublished)": "/?round=2",
            f"matrix ({built['teams']}x{built['teams']})": f"/matrix?{matrix}&round=1",
            "rounds and history": "/rounds",
            "defense page (standing)": "/plugins/2",
            "team page (standing)": "/teams/1",
            "class status": "/status",
            "api/leaderboard": "/api/leaderboard?round=1",
            "api/matrix": f"/api/matrix?{matrix}&round=1",
        }
        figures["workers"] = args.workers
        with _started(url, args.workers) as (port, child):
            for name, path in pages.items():
                status, size, seconds = get(port, path)
                print(f"first view of {name}: {seconds * 1000:.0f} ms, {size / 1024:.0f} KiB (HTTP {status})")
                figures["pages"][name] = {"path": path, "first_ms": seconds * 1000, "kib": size / 1024}
            for path in pages.values():  # every server process scores and renders each page once
                load(port, path, args.workers, 2)
            load_line = f"{args.clients} concurrent clients, {args.requests} requests each"
            print(f"\n{args.workers} server processes, warm; {load_line}:")
            print(f"{'page':<36} {'median ms':>10} {'p95 ms':>10} {'req/s':>8}")
            for name, path in pages.items():
                started = time.perf_counter()
                latencies = sorted(load(port, path, args.clients, args.requests))
                took = time.perf_counter() - started
                median = statistics.median(latencies) * 1000
                p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)] * 1000
                print(f"{name:<36} {median:>10.1f} {p95:>10.1f} {len(latencies) / took:>8.1f}")
                figures["pages"][name] |= {"median_ms": median, "p95_ms": p95, "per_second": len(latencies) / took}
            figures["server_rss_mib"] = _rss_mib(child.pid)
            print(f"\nserver memory (RSS): {figures['server_rss_mib']:.0f} MiB")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
