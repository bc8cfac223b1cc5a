"""A local round one job at a time against several side by side (`arena round run --jobs N`), paired in one run.

For each job count (by default 1, then the machine's default, :func:`arena.config.default_jobs`), in turn and
``--repeats`` times: a fresh arena home (the same secret, so the same keys), `arena round run` in a process of its
own, and what it measured:

* wall: the round's wall-clock seconds (the whole command: sync, planning, every job);
* cpu: the CPU seconds of the command and every process descending from it (workers, sandboxes, warm attack
  processes; read from ``/proc`` every half second, each process's last reading), and cpu / wall: the cores the
  round kept busy on average (on a shared machine, its share of them);
* busy: the machine's busy share (``/proc/stat``, every core, sampled each half second) over the whole round and
  over its match phase (the first match's start to the last match's end): on a shared machine, the others' too;
* the results: every result's figures and every artifact's bytes are compared with the first count's (bit for bit):
  equal where every job has the same torch threads (``--threads 1``); by default one job alone has every core's
  threads and two side by side one each, and a model trained on other threads may differ in its last bits.

    python bench/local_parallel.py [--track digits] [--builtins NAMES] [--jobs 1,2] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena.config import default_jobs  # noqa: E402

#: a smaller round than the demo's (every built-in: about 15 minutes on 2 cores): two trained defenses, a
#: gray-box twin each, the substitute, and the course's quick attacks under every threat
DEFAULT_BUILTINS = "fgsm,pgd,transfer,deepfool,undefended,fgsm-adv-training"
SECRET = "5e" * 32
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """The machine's (busy, total) jiffies since boot, every core together."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def processes() -> dict[int, tuple[int, float]]:
    """Every process now: pid -> (parent pid, CPU seconds it used so far)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    return found


class Sampler(threading.Thread):
    """Every half second: ``/proc/stat`` as (time, busy, total) samples, and the CPU seconds of ``root`` and every
    process descending from it (the last seen of each: a process living less than a sample between is missed)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self.tree, self.cpu = {root}, {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), *cpu_times()))
            now = processes()
            for pid in sorted(now):  # a parent's pid is nearly always smaller: one pass finds most of a tree
                parent, seconds = now[pid]
                if parent in self.tree or pid in self.tree:
                    self.tree.add(pid)
                    self.cpu[pid] = seconds
            self.stopped.wait(0.5)

    def busy(self, start: float, end: float) -> float | None:
        """The busy share between two times (the samples nearest inside them)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (_, b0, t0), (_, b1, t1) = inside[0], inside[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def _figures(metrics: str) -> dict:
    """A result's figures but its timings (they measure the machine: they differ between any two runs)."""
    return {name: value for name, value in json.loads(metrics).items() if name != "attack_seconds"}


def play(home: Path, track: str, builtins: str, jobs: int, threads: int | None) -> dict:
    """One round in a fresh home; what it measured and what it made."""
    home.mkdir(parents=True)
    (home / "secret").write_text(SECRET)
    env = os.environ | {"ARENA_HOME": str(home), "ARENA_BUILTINS": builtins}
    env.pop("OMP_NUM_THREADS", None)  # each job's share of the cores is the executor's choice, unless --threads
    env |= {"OMP_NUM_THREADS": str(threads)} if threads else {}
    started = time.time()
    command = [sys.executable, "-c", "from arena.commands.cli import main; main()", "round", "run", "--track", track]
    run = subprocess.Popen([*command, "--quiet", "--jobs", str(jobs)], env=env, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(run.pid)
    sampler.start()
    out, _ = run.communicate()
    ended = time.time()
    sampler.stopped.set()
    sampler.join()
    if run.returncode != 0:
        raise RuntimeError(f"the round failed:\n{out[-3000:]}")
    cpu = sum(sampler.cpu.values())
    with sqlite3.connect(home / "arena.db") as db:
        rows = db.execute("select key, status, metrics from results")
        results = {key: (status, _figures(metrics)) for key, status, metrics in rows}
        artifacts = {
            key: hashlib.sha256(data).hexdigest() for key, data in db.execute("select key, data from artifacts")
        }
        phase = "select min(started_at), max(finished_at) from jobs where kind = 'match'"
        first, last = db.execute(phase).fetchone()
        kinds = dict(db.execute("select kind, count(*) from jobs group by kind").fetchall())
    match_start, match_end = (datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp() for t in (first, last))
    return {
        "wall": ended - started,
        "cpu": cpu,
        "busy": sampler.busy(started, ended),
        "match_busy": sampler.busy(match_start, match_end),
        "match_wall": match_end - match_start,
        "results": results,
        "artifacts": artifacts,
        "kinds": kinds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--track", default="digits")
    parser.add_argument("--builtins", default=DEFAULT_BUILTINS, help="ARENA_BUILTINS of the round ('' : the demo's)")
    parser.add_argument("--jobs", default=f"1,{default_jobs()}", help="job counts to pair, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads of every job (default: the executor's choice)")
    args = parser.parse_args()
    counts = [int(n) for n in args.jobs.split(",")]
    print(
        f"{os.cpu_count()} cores, default {default_jobs()} jobs; track {args.track}; builtins {args.builtins or 'all'}"
    )
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="local-parallel-") as scratch:
        for repeat in range(args.repeats):
            for n in counts:
                run = play(Path(scratch) / f"{repeat}-{n}", args.track, args.builtins, n, args.threads)
                runs[n].append(run)
                match_busy = f"{100 * run['match_busy']:.0f} %" if run["match_busy"] is not None else "?"
                print(
                    f"--jobs {n}: wall {run['wall']:.1f} s (matches {run['match_wall']:.1f} s), cpu {run['cpu']:.1f} s"
                    f" = {run['cpu'] / run['wall']:.2f} cores busy; machine busy {100 * (run['busy'] or 0):.0f} %,"
                    f" during matches {match_busy}; jobs {run['kinds']}",
                    flush=True,
                )
    reference = runs[counts[0]][0]
    for n in counts:
        for run in runs[n]:
            artifacts = sum(run["artifacts"].get(k) != v for k, v in reference["artifacts"].items())
            results = sum(run["results"].get(k) != v for k, v in reference["results"].items())
            print(f"--jobs {n}: {artifacts} artifact(s) and {results} result(s) differ from --jobs {counts[0]}'s")
    base = min(r["wall"] for r in runs[counts[0]])
    for n in counts[1:]:
        best = min(r["wall"] for r in runs[n])
        print(f"--jobs {n}: {base / best:.2f}x the speed of --jobs {counts[0]} (best of {args.repeats} each, paired)")


if __name__ == "__main__":
    main()
