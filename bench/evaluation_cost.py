"""What the secret evaluation data cost: honest accuracy, lookups, and the time to build a set and to quantise.

    ARENA_DATA_DIR=../shared/data python bench/evaluation_cost.py [--track digits] [--track mnist-linf]

For each track: the reference CNN (trained as ``undefended`` trains it, one torch thread) is evaluated on
the public held-out subset and on the secret distortion of it; beside it, how many evaluation images lie
within the track's L-inf budget of some public test image (what a lookup table would find), the seconds
to build the set (once per track and secret, by the planner) and the seconds to quantise a match's
adversarial images, paired with a plain ``torch.round`` of the same tensor.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from arena.config import Settings
from arena.rules import evaluation
from arena.rules.referee import project, quantize_within
from arena.rules.tracks import TRACKS


def train_cnn(track, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = track.make_reference()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(track.epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 128):
            index = order[start : start + 128]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", action="append", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = Settings.from_env().data_dir
    print(f"{'track':12s} {'set':12s} {'cnn clean':>9s} {'lookup hits':>11s} {'build s':>8s} {'quantise/round':>14s}")
    for name in args.track or ["digits"]:
        track = TRACKS[name]
        x_train, y_train = track.train_set(data_dir)
        model = train_cnn(track, x_train, y_train)
        public = torch.tensor(track.load(data_dir).x_test).flatten(1)
        for kind in ("public", "transformed"):
            started = time.perf_counter()
            built = evaluation.build(dataclasses.replace(track, evaluation=kind), data_dir, b"bench")
            seconds = time.perf_counter() - started
            with torch.no_grad():
                clean = (model(built.x).argmax(1) == built.y).float().mean().item()
            flat = built.x.flatten(1)
            nearest = torch.cat(
                [torch.cdist(flat[i : i + 50], public, p=float("inf")).min(1).values for i in range(0, len(flat), 50)]
            )
            hits = (nearest <= track.eps + 1e-6).float().mean().item()
            noisy, _ = project(built.x + 0.5 * torch.randn_like(built.x), built.x, track.norm, track.eps)
            rules = (track.levels, track.norm, track.eps)
            arena_s = timed(lambda: quantize_within(noisy, built.x, *rules))  # noqa: B023 (called at once)
            plain_s = timed(lambda: torch.round(noisy * 255) / 255)  # noqa: B023
            shown = f"{arena_s * 1e3:6.2f}/{plain_s * 1e3:.2f} ms"
            print(f"{name:12s} {kind:12s} {clean:9.3f} {hits:11.3f} {seconds:8.3f} {shown:>14s}")


def timed(function: Callable[[], object], repeat: int = 20) -> float:
    """Mean seconds of ``function()``."""
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat


if __name__ == "__main__":
    main()
