"""Training time and clean accuracy of every built-in defense, trained exactly as the arena trains it.

Each defense trains in its sandbox through ``arena.play.training.train_defense`` (the code path of a round's
``train-defense`` job) and its artifact is kept under ``--cache``, keyed like the arena's own artifacts by
(content hash, track configuration, training version, seed): a second run trains nothing and only reads the
artifacts back (``--retrain`` trains again). One row per defense and track: the seconds ``train(ctx)`` took
in its sandbox, the clean accuracy and the share of clean inputs rejected on the track's evaluation subset
(over the track's draws for randomized defenses, as the referee counts them), and the track's floor.

    python bench/defense_training.py --track digits --track mnist-linf [--defense magnet]... [--cache DIR] [--plain]
    python bench/defense_training.py --track digits --secrets 3 [--train-once]

``--secrets N`` measures what a floor must leave room for: each defense trained under N arenas' secrets (its seed
as a round derives it) and judged on each secret's own evaluation images (photographed on a physical track), as a
round's referee judges them; one row per defense, track and secret, then the lowest and the margin over the floor.
``--train-once`` trains under the first secret only (MNIST: the evaluation images vary, the training once).

``--plain`` adds the raw PyTorch loop that does the undefended baseline's work (the track's reference CNN,
Adam at 1e-3, batches of 128, the track's epochs) in this process, without the arena: the row to read
``undefended`` against.

Set ARENA_DATA_DIR to a folder with mnist.npz for the MNIST tracks (e.g. ../shared/data). Run it niced on a
shared machine: MNIST trains every defense in minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from arena.config import Settings
from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play.judging import photographed
from arena.play.training import TRAINING_VERSION, TrainSpec, load_model, pick_device, train_defense
from arena.rules import evaluation
from arena.rules.referee import classify, judge
from arena.rules.seeds import derive_seed
from arena.rules.tracks import TRACKS, Track

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = sorted(p.parent.name for p in (ROOT / "plugins" / "defenses").glob("*/plugin.toml"))
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "arena-bench-defenses"


@dataclass
class Trained:
    """A defense's artifact, loaded, with what its training reported."""

    name: str
    source: PluginSource
    model: torch.nn.Module
    randomized: bool
    meta: dict[str, Any]


def train_or_load(
    name: str, track: Track, data_dir: Path, cache: Path, retrain: bool = False, secret: bytes = b"bench"
) -> Trained:
    """The defense ``name`` trained on ``track`` by the arena's own code, with the seed a round under ``secret``
    derives; from ``cache`` when it is there."""
    source = plugins.read_folder(ROOT / "plugins" / "defenses" / name)
    seed = derive_seed(secret, "defense", source.content_hash, track.name)
    key = hashlib.sha256(
        json.dumps([source.content_hash, track.config(), TRAINING_VERSION, seed], sort_keys=True).encode()
    ).hexdigest()[:24]
    artifact, meta_file = cache / f"{name}-{track.name}-{key}.pt", cache / f"{name}-{track.name}-{key}.json"
    if retrain or not artifact.is_file():
        data, meta = train_defense(TrainSpec(source, track, seed, data_dir, cache / "plugin-cache"))
        cache.mkdir(parents=True, exist_ok=True)
        artifact.write_bytes(data)
        meta_file.write_text(json.dumps(meta))
    loaded = plugins.load(source, cache / "plugin-cache")
    model = load_model(artifact.read_bytes(), pick_device(), source, cache / "plugin-cache")
    meta = json.loads(meta_file.read_text())
    return Trained(name, source, model, bool(getattr(loaded.cls, "randomized", False)), meta)


def clean_figures(trained: Trained, track: Track, data_dir: Path, secret: bytes | None = None) -> dict[str, float]:
    """Clean accuracy and rejection rate on the track's public evaluation subset, or on the secret evaluation
    images of an arena whose secret is ``secret``, as the referee counts them."""
    if secret is None:
        x, y, _, _ = track.eval_set(data_dir)
    else:
        x, y = secret_images(track, data_dir, secret)
    x, y = x.to(pick_device()), y.to(pick_device())
    draws = track.draws if trained.randomized else 1
    started = time.perf_counter()
    verdict = classify(trained.model, x, draws)
    records = judge(x, y, x, torch.zeros(len(x), dtype=torch.bool, device=x.device), verdict, verdict, None)
    return {
        "clean_accuracy": float(records["clean_correct"].mean()),
        "rejected": float(records["clean_rejected"].mean()),
        "classify_seconds": time.perf_counter() - started,
    }


@functools.cache
def secret_images(track: Track, data_dir: Path, secret: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images (photographed on a physical track) and labels of an arena whose secret is ``secret``,
    built once per track and secret (on MNIST a build takes minutes)."""
    secret_set = evaluation.build(track, data_dir, secret)
    return photographed(track, secret_set, secret_set.x), secret_set.y


def plain_training(track: Track, data_dir: Path) -> tuple[float, float]:
    """Seconds a plain PyTorch loop takes to train the reference CNN as ``undefended`` does, and its clean
    accuracy on the track's evaluation subset."""
    device = pick_device()
    x_train, y_train = (t.to(device) for t in track.train_set(data_dir))
    torch.manual_seed(0)
    model = track.make_reference().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for _ in range(track.epochs):
        order = torch.randperm(len(x_train), device=device)
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            loss = torch.nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    x, y, _, _ = track.eval_set(data_dir)
    with torch.no_grad():
        accuracy = float((model.eval()(x.to(device)).argmax(1) == y.to(device)).float().mean())
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", action="append", choices=sorted(TRACKS), help="default: digits")
    parser.add_argument("--defense", action="append", choices=DEFENSES, help="default: all built-in defenses")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"artifacts (default {DEFAULT_CACHE})")
    parser.add_argument("--retrain", action="store_true", help="train again even when the artifact is cached")
    parser.add_argument("--plain", action="store_true", help="add the plain PyTorch loop of the baseline's work")
    parser.add_argument("--secrets", type=int, default=0, help="judge on the secret images of N arenas' secrets")
    parser.add_argument("--train-once", action="store_true", help="with --secrets: train under the first only")
    args = parser.parse_args()
    data_dir = Settings.from_env().data_dir
    if args.secrets:
        floors(args, data_dir)
        return
    print(f"{'defense':<22} {'track':<11} {'train s':>8} {'clean':>6} {'reject':>7} {'floor':>6}  classify s")
    for track_name in args.track or ["digits"]:
        track = TRACKS[track_name]
        for name in args.defense or DEFENSES:
            trained = train_or_load(name, track, data_dir, args.cache, args.retrain)
            figures = clean_figures(trained, track, data_dir)
            mark = "" if figures["clean_accuracy"] >= track.clean_floor else "  below the floor"
            print(
                f"{name:<22} {track.name:<11} {trained.meta['seconds']:8.1f} {figures['clean_accuracy']:6.3f} "
                f"{figures['rejected']:7.3f} {track.clean_floor:6.2f}  {figures['classify_seconds']:6.1f}{mark}",
                flush=True,
            )
        if args.plain:
            seconds, accuracy = plain_training(track, data_dir)
            print(f"{'(plain PyTorch loop)':<22} {track.name:<11} {seconds:8.1f} {accuracy:6.3f}", flush=True)


def floors(args: argparse.Namespace, data_dir: Path) -> None:
    """Per defense and track, the clean accuracy on each secret's evaluation images; the lowest and its margin."""
    secrets = [f"floor-{i}".encode() for i in range(args.secrets)]
    print(f"{'defense':<22} {'track':<15} {'secret':<8} {'clean':>6} {'reject':>7}")
    for track_name in args.track or ["digits"]:
        track = TRACKS[track_name]
        for name in args.defense or DEFENSES:
            lowest = 1.0
            for secret in secrets:
                trained = train_or_load(
                    name, track, data_dir, args.cache, args.retrain, secrets[0] if args.train_once else secret
                )
                figures = clean_figures(trained, track, data_dir, secret)
                lowest = min(lowest, figures["clean_accuracy"])
                print(
                    f"{name:<22} {track.name:<15} {secret.decode():<8} {figures['clean_accuracy']:6.3f} "
                    f"{figures['rejected']:7.3f}",
                    flush=True,
                )
            margin = 100 * (lowest - track.clean_floor)
            print(f"{name:<22} {track.name:<15} {'lowest':<8} {lowest:6.3f} floor {track.clean_floor:.2f}, "
                  f"margin {margin:+.1f} points{'' if margin >= 2 else '  UNDER 2 POINTS'}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
