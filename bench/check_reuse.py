"""`arena plugin check` after a demo-like arena: the check as it was (its scratch arena trains every model again)
against the check now (the arena's trained models and validations reused by key), paired in one run.

It builds one arena (`arena round run` with ARENA_BUILTINS, or `arena demo --no-serve` with ``--demo``; the default is
every built-in defense with fgsm and transfer: what an attack's check plays against after `make demo`), scaffolds an
attack, then times, for each code
(a git revision, by default the merge base with main, and this checkout), in turn:

* the first check after the arena's round, in a fresh scratch arena (``ARENA_HOME/checks`` removed first);
* a second check, of a changed version of the same attack, in the scratch arena the first one left.

Every run is a fresh `arena` process with one torch thread (OMP_NUM_THREADS=1), as a student runs it.

    python bench/check_reuse.py [--before REV] [--repeats N] [--builtins NAMES] [--keep DIR] [--demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUILTINS = (
    "fgsm,transfer,undefended,fgsm-adv-training,pgd-adv-training,ensemble-adv-training,distillation,magnet,defense-gan"
)
ARENA = "from arena.commands.cli import main; main()"


def arena(code: Path, env: dict[str, str], *args: str, timeout: float = 3600) -> float:
    """Run ``arena ARGS`` with the package at ``code``; return its wall-clock seconds (raise if it fails)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", ARENA, *args],
        env=env | {"PYTHONPATH": str(code)},
        cwd=Path(env["ARENA_HOME"]).parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"arena {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return seconds


def checkout(revision: str, where: Path) -> Path:
    """The tree of ``revision`` unpacked at ``where`` (git archive: no worktree is left behind)."""
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="git revision of the code before [merge base with main]")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs [1]")
    parser.add_argument("--builtins", default=DEFAULT_BUILTINS, help="ARENA_BUILTINS of the arena")
    parser.add_argument("--keep", type=Path, help="keep the arena in this folder (else a temporary one)")
    parser.add_argument("--demo", action="store_true", help="the arena's round is `arena demo`'s (its fewer images)")
    args = parser.parse_args()
    before = (
        args.before
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    root = args.keep or Path(tempfile.mkdtemp(prefix="arena-bench-check-"))
    home = root / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(root)),
        "ARENA_HOME": str(home),
        "ARENA_BUILTINS": args.builtins,
        "OMP_NUM_THREADS": "1",
    }
    codes = {"before": checkout(before, root / "before"), "now": ROOT}
    print(f"arena: {home} (ARENA_BUILTINS={args.builtins}); before = {before[:12]}, now = this checkout")
    if not (home / "arena.db").exists():
        played = ("demo", "--no-serve") if args.demo else ("round", "run", "--track", "digits", "--quiet")
        took = arena(ROOT, env, *played)
        print(f"the arena's round (its defenses, twins and substitute trained): {took:.1f} s")
    probe = root / "probe"
    if not probe.exists():
        arena(ROOT, env, "plugin", "new", "attack", "probe", "--team", "bench", "--dir", str(root))
    module = probe / "probe.py"
    original = module.read_text()
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for name, code in codes.items():
            shutil.rmtree(home / "checks", ignore_errors=True)
            module.write_text(original)
            first = arena(code, env, "plugin", "check", str(probe))
            module.write_text(original + f"\n# changed: run {repeat}\n")  # a new version: its matches play again
            second = arena(code, env, "plugin", "check", str(probe))
            times.setdefault((name, "first"), []).append(first)
            times.setdefault((name, "second"), []).append(second)
            print(f"  repeat {repeat} {name:<6}: first check {first:6.1f} s, second check {second:6.1f} s")
    module.write_text(original)
    print(f"\n{'check':<8} {'before s':>9} {'now s':>7} {'before/now':>11}")
    for which in ("first", "second"):
        old, new = statistics.median(times["before", which]), statistics.median(times["now", which])
        print(f"{which:<8} {old:9.1f} {new:7.1f} {old / new:10.1f}x")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
