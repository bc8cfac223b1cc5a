"""The time to build a track's secret evaluation set: the arena's search for draws no lookup holds, paired with
judging every draw of every held image (what the search did before), same secret, one torch thread.

    ARENA_DATA_DIR=../shared/data python bench/evaluation_build.py --track mnist-linf --images 200 [--repeat 2]

Both must choose the same images (checked: the sets are equal bit for bit); the ratio is the exhaustive search's
seconds over the arena's, per repeat (they alternate, so a noisy machine slows both alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from arena.config import Settings
from arena.rules import evaluation
from arena.rules.data import Dataset
from arena.rules.hookspecs import Budget
from arena.rules.neighbors import breakable
from arena.rules.tracks import TRACKS, Track


def exhaustive(
    track: Track, data: Dataset, images: torch.Tensor, chosen: torch.Tensor, seeds: list[int], draw: Callable
) -> torch.Tensor:
    """The reference: every later draw of every held image judged, the least distorted unheld one kept."""
    public_x = torch.tensor(np.concatenate([data.x_train, data.x_test]))
    public_y = torch.tensor(np.concatenate([data.y_train, data.y_test]))
    budget = Budget(track.norm, track.eps, 0, torch.Generator(), levels=track.levels)
    y = torch.tensor(data.y_test[chosen.numpy()])
    rows = (~breakable(images, y, public_x, public_y, budget)).nonzero().squeeze(1)
    originals = torch.tensor(data.x_test[chosen.numpy()])[rows]
    best = torch.full((len(rows),), float("inf"))
    for seed in seeds:
        candidate = draw(seed)[rows]
        moved = (candidate - originals).flatten(1).norm(dim=1)
        better = breakable(candidate, y[rows], public_x, public_y, budget) & (moved < best)
        images[rows[better]], best[better] = candidate[better], moved[better]
    return images


def timed(track: Track, data_dir: Path, search: Callable) -> tuple[float, torch.Tensor]:
    """Seconds to build ``track``'s set with ``search`` as the redraw, and the images."""
    arena_search = evaluation._unheld
    evaluation._unheld = search
    try:
        start = time.perf_counter()
        images = evaluation.build(track, data_dir, b"bench-evaluation-build-secret").x
        return time.perf_counter() - start, images
    finally:
        evaluation._unheld = arena_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", action="append", choices=sorted(TRACKS), help="default: digits")
    parser.add_argument("--images", type=int, default=200, help="the set's size (default 200)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = Settings.from_env().data_dir
    print("track        images  exhaustive s  arena s  ratio  equal")
    for name in args.track or ["digits"]:
        track = dataclasses.replace(TRACKS[name], eval_size=args.images)
        for _ in range(args.repeat):
            before, reference = timed(track, data_dir, exhaustive)
            after, images = timed(track, data_dir, evaluation._unheld)
            equal = torch.equal(reference, images)
            print(f"{name:12} {args.images:6} {before:13.1f} {after:8.1f} {before / after:6.2f}  {equal}", flush=True)


if __name__ == "__main__":
    main()
