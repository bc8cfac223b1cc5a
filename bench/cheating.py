"""Cheating defenses (tests/cheats) against the plain baseline in a real digits round: clean and worst case.

    python bench/cheating.py [--track digits] [--eval-size 300] [--evaluation public]
    python bench/cheating.py --masking     # the squeezes: every attack, then with autoattack and spsa
    python bench/cheating.py --lookups [--builtins fgsm,pgd,...]  # lookups of the public images (lookup-public)
    python bench/cheating.py --failures [--builtins ...]  # exit, stall, slow, sabotage, batch detection (issue 24)

``--secret HEX`` plays under a given arena secret (the same evaluation images and training seeds: paired runs).

Prints, per threat, each defense's clean and worst-case robust accuracy. A cheat that works scores far
above ``undefended``; the arena's secret evaluation data and pixel grid keep each at its honest level.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import cheating  # noqa: E402 (tests/cheating.py)

from arena.config import Settings  # noqa: E402
from arena.rules.tracks import TRACKS, Track  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="digits")
    parser.add_argument("--eval-size", type=int, default=None)
    parser.add_argument("--evaluation", choices=("transformed", "public"), default="transformed")
    parser.add_argument(
        "--masking",
        action="store_true",
        help="the squeezes and built-in defenses against every built-in attack, then again with the reference attacks",
    )
    parser.add_argument("--lookups", action="store_true", help="the lookups of the public images (cheating.LOOKUPS)")
    parser.add_argument("--failures", action="store_true", help="the failure cheats (cheating.FAILURE_CHEATS)")
    parser.add_argument("--builtins", default=None, help="the built-in plugins that play, comma-separated")
    parser.add_argument("--secret", default=None, help="the arena's secret, in hex (default: a fresh one)")
    args = parser.parse_args()
    track = dataclasses.replace(TRACKS[args.track], evaluation=args.evaluation)
    if args.eval_size:
        track = dataclasses.replace(track, eval_size=args.eval_size)
    root = Path(tempfile.mkdtemp(prefix="arena-cheating-", dir=Path.home()))
    os.environ["ARENA_HOME"] = str(root / "home")
    if args.secret:
        (root / "home").mkdir(parents=True)
        (root / "home" / "secret").write_text(args.secret)
    if args.lookups:
        builtins = tuple(args.builtins.split(",")) if args.builtins else cheating.LOOKUP_BUILTINS
        folder = cheating.install_lookups(root / "plugins", track.load(Settings.from_env().data_dir))
        os.environ.update(cheating.environment(folder, builtins))
        show(track, *timed_round(track))
        return
    if args.failures:
        builtins = tuple(args.builtins.split(",")) if args.builtins else (*cheating.ATTACKS, "pgd-adv-training")
        os.environ.update(cheating.environment(cheating.install(root / "plugins", cheating.FAILURE_CHEATS), builtins))
        show(track, *timed_round(track))
        return
    if not args.masking:
        os.environ.update(cheating.environment(cheating.install(root / "plugins")))
        show(track, *timed_round(track))
        return
    folder = cheating.install(root / "plugins", cheating.MASKERS)
    defenses = ("undefended", "pgd-adv-training", "distillation")
    for attacks in (cheating.ALL_ATTACKS, (*cheating.ALL_ATTACKS, *cheating.REFERENCE_ATTACKS)):
        os.environ.update(cheating.environment(folder, (*attacks, *defenses)))
        figures, seconds = timed_round(track)
        print(f"\n=== {len(attacks)} attacks{' with the reference attacks' if len(attacks) > 10 else ''}")
        show(track, figures, seconds)
        print("\nwhite-box success rate per attack (rows) and defense (columns)")
        names = sorted({key[1] for key in figures if len(key) == 3})
        print(f"{'':14s}" + "".join(f"{d[:12]:>13s}" for d in names))
        for attack in sorted({key[0] for key in figures if len(key) == 3}):
            cells = [figures.get((attack, d, "white-box"), {}).get("success") for d in names]
            print(f"{attack:14s}" + "".join(f"{c:13.3f}" if c is not None else f"{'-':>13s}" for c in cells))


def timed_round(track: Track) -> tuple[dict, float]:
    """A round of the configured plugins (results of earlier rounds reused) and its wall time."""
    started = time.perf_counter()
    figures = cheating.play(Settings.from_env(), track)
    return figures, time.perf_counter() - started


def show(track: Track, figures: dict, seconds: float) -> None:
    """Each defense's clean, worst-case and mean robust accuracy and its diagnostics, per threat."""
    print(f"{track.name} ({track.evaluation}, {track.eval_size} images), {seconds:.0f} s")
    print(f"{'defense':26s} {'threat':10s} {'clean':>6s} {'worst':>6s} {'mean':>6s} failed  diagnostics")
    standings = {key: row for key, row in figures.items() if len(key) == 2 and "clean" in row}  # not attacks' rows
    for (defense, threat), row in sorted(standings.items(), key=lambda item: (item[0][1], item[0][0])):
        shown = " ".join(f"{row[k]:6.3f}" if row[k] is not None else f"{'-':>6s}" for k in ("clean", "worst", "mean"))
        print(f"{defense:26s} {threat:10s} {shown} {row['failed']:6d}  {', '.join(row['diagnostics'])}")


if __name__ == "__main__":
    main()
