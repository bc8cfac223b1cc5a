"""How long the game's equilibrium takes (arena.results.game.solve: two linear programs, scipy's HiGHS) by matrix size.

Random success rates in [0, 1]; the median of ``--repeat`` solves per size, one thread.

    python bench/game_speed.py [--size 10 --size 50 --size 100 --size 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from arena.results.game import solve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="attacks = defenses (repeatable)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(0)
    print("| attacks x defenses | median ms | value |")
    print("|---|---|---|")
    for size in args.size or [10, 50, 100, 200]:
        payoff = rng.random((size, size))
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            game = solve(payoff)
            seconds.append(time.perf_counter() - started)
        print(f"| {size} x {size} | {1000 * statistics.median(seconds):.1f} | {game.value:.3f} |", flush=True)


if __name__ == "__main__":
    main()
