"""Every built-in attack against a track's undefended reference model, in real matches: the strength table.

Each attack that respects the track's norm plays the ``undefended`` baseline under every threat model it declares,
exactly as in a round (sandboxes, the referee, the track's evaluation samples, budget and targets): white-box against
the model itself, gray-box against its twin (the same code trained with another seed), black-box through queries and
the arena's substitute. The table gives robust accuracy, success rate, the mean perturbation of the successful
samples, queries per sample and the attack's wall time; for ``universal``, how much of the training split its single
delta fools (from the attack's log), beside how much of the held-out evaluation samples it breaks.

    ARENA_DATA_DIR=../shared/data python bench/attack_strength.py --track mnist-linf [--attack pgd]... [--threat T]...

The trained models are kept in ``ARENA_HOME/bench``, so later runs skip training.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path

from arena.config import Settings
from arena.contract import plugins
from arena.play.match import MatchSpec, play
from arena.play.training import TrainSpec, train_defense, train_substitute
from arena.rules import evaluation
from arena.rules.seeds import derive_seed
from arena.rules.tracks import Track, get_track, load_tracks

ROOT = Path(__file__).resolve().parents[1]


def artifact(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes at ``path``, made by ``make()`` (and kept there) the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        path.write_bytes(make())
        print(f"trained {path.name} in {time.perf_counter() - started:.0f} s")
    return path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="digits", help="a track: built in, or in ARENA_HOME/tracks.toml")
    parser.add_argument("--attack", action="append", help="an attack plugin's name (repeatable) [all]")
    parser.add_argument("--threat", action="append", help="a threat model (repeatable) [all the attack declares]")
    args = parser.parse_args()
    settings = Settings.from_env()
    track: Track = get_track(args.track, load_tracks(settings.home))
    cache = settings.home / "bench"
    defense = plugins.read_folder(ROOT / "plugins" / "defenses" / "undefended")

    def trained(seed_name: str) -> bytes:
        seed = derive_seed(b"bench", seed_name, defense.content_hash, track.name)
        return train_defense(TrainSpec(defense, track, seed, settings.data_dir, cache))[0]

    stem = f"{track.name}-{defense.content_hash[:12]}"
    defended = artifact(cache / f"undefended-{stem}.pt", lambda: trained("defense"))
    twin = artifact(cache / f"undefended-twin-{stem}.pt", lambda: trained("twin"))
    substitute = artifact(cache / f"substitute-{track.name}.pt", lambda: train_substitute(track, settings.data_dir)[0])

    attacks = sorted(p for p in (ROOT / "plugins" / "attacks").iterdir() if (p / "plugin.toml").is_file())
    print(f"track {track.name}: {track.eval_size} samples, {track.norm} eps {track.eps:g}, {track.max_queries} queries")
    print(f"{'attack':14s} {'threat':10s} {'robust':>7s} {'success':>8s} {'mean l0':>8s} {'mean l2':>8s}", end="")
    print(f" {'mean linf':>9s} {'queries':>8s} {'seconds':>8s}  notes")
    for folder in attacks:
        source = plugins.read_folder(folder)
        cls = plugins.load(source, cache).cls
        if track.norm not in cls.norms or (args.attack and folder.name not in args.attack):
            continue
        for threat in cls.threats:
            if args.threat and threat not in args.threat:
                continue
            packed = evaluation.build(track, settings.data_dir, b"bench").pack(track.levels)
            spec = MatchSpec(
                source,
                defense,
                track,
                threat,
                0,
                defended,
                twin,
                substitute,
                packed,
                settings.data_dir,
                cache,
                cls.targeted,
            )
            outcome = play(spec)
            if outcome.status != "ok":
                print(f"{folder.name:14s} {threat:10s} FAILED: {outcome.error}")
                continue
            m = outcome.metrics
            norms = [m[f"mean_{n}"] for n in ("l0", "l2", "linf")]
            shown = " ".join(f"{v:8.3f}" if v is not None else f"{'-':>8s}" for v in norms[:2])
            notes = ", ".join(re.findall(r"v fools [0-9.]+ of \d+ training images", outcome.log_tail)[-1:])
            if cls.targeted:
                notes = f"target hit rate {m['target_hit_rate']:.3f}"
            print(
                f"{folder.name:14s} {threat:10s} {m['robust_accuracy']:7.3f} {m['success_rate']:8.3f} {shown} "
                f"{norms[2] if norms[2] is not None else float('nan'):9.3f} {m['queries_per_sample']:8.1f} "
                f"{m['attack_seconds']:8.1f}  {notes}"
            )
    print(f"clean accuracy of the undefended model: {m['clean_accuracy']:.3f}")


if __name__ == "__main__":
    main()
