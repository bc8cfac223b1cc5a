"""The arena's per-match overhead against a plain PyTorch loop doing the same FGSM on the same model and data.

Both sides attack the same trained `undefended` model with FGSM on the track's evaluation subset, clip
and project, and classify clean and adversarial inputs. The arena adds: loading both plugins, a
sandboxed child process for the attack, pickling batches across the pipe, the referee's checks,
per-sample records and the gallery. Each repeat plays the match twice: as a cold worker (a fresh attack
process, the clean verdict computed: every match's cost before warm workers) and as a warm worker (the
attack's process of the previous match and the defense's clean verdict kept, see arena.play.match.AttackPool);
one torch thread. Where a GPU is visible both sides run on it.

    python bench/match_overhead.py [--track digits] [--repeat 5]

Set ARENA_DATA_DIR to a folder with mnist.npz to use ``--track mnist-linf``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from arena.config import Settings
from arena.contract import plugins
from arena.play.match import MatchSpec, Warm, play
from arena.play.training import TrainSpec, load_model, pick_device, train_defense, train_substitute
from arena.rules import evaluation
from arena.rules.seeds import derive_seed
from arena.rules.tracks import TRACKS

ROOT = Path(__file__).resolve().parents[1]


def plain_fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int) -> float:
    """The bare loop: FGSM, clip, classify clean and adversarial; returns robust accuracy."""
    survived = 0
    for start in range(0, len(x), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        xb_grad = xb.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xb_grad), yb, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb_grad)
        x_adv = (xb + eps * grad.sign()).clamp(0, 1)
        with torch.no_grad():
            clean_ok = model(xb).argmax(1) == yb
            survived += int((clean_ok & (model(x_adv).argmax(1) == yb)).sum())
    return survived / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="digits", choices=sorted(TRACKS))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    track = TRACKS[args.track]
    settings = Settings.from_env()
    cache = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    attack = plugins.read_folder(ROOT / "plugins" / "attacks" / "fgsm")
    defense = plugins.read_folder(ROOT / "plugins" / "defenses" / "undefended")

    started = time.perf_counter()
    seed = derive_seed(b"bench", "defense", defense.content_hash, track.name)
    artifact, _ = train_defense(TrainSpec(defense, track, seed, settings.data_dir, cache))
    substitute, _ = train_substitute(track, settings.data_dir)
    print(f"training undefended and the substitute on {track.name}: {time.perf_counter() - started:.1f} s")

    evaluated = evaluation.build(track, settings.data_dir, b"bench")
    spec = MatchSpec(
        attack,
        defense,
        track,
        "white-box",
        0,
        artifact,
        None,
        substitute,
        evaluated.pack(track.levels),
        settings.data_dir,
        cache,
    )
    device = pick_device()  # the bare loop runs where the arena's processes run: a GPU when there is one
    model = load_model(artifact, device, defense, cache)
    x, y = evaluated.x.to(device), evaluated.y.to(device)

    torch.set_num_threads(1)
    fresh_times, warm_times, plain_times = [], [], []
    with Warm() as kept:
        for _ in range(args.repeat):
            kept.verdicts.clear()  # a cold worker: every process fresh, the clean verdict computed
            started = time.perf_counter()
            fresh = play(spec)
            fresh_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            warm = play(spec, kept)  # a warm worker: the attack's process and the clean verdict kept
            warm_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            robust = plain_fgsm(model, x, y, track.eps, track.batch_size)  # .item() waits for the GPU
            plain_times.append(time.perf_counter() - started)
    assert fresh.status == warm.status == "ok", (fresh.error, warm.error)
    fresh_s, warm_s = statistics.median(fresh_times), statistics.median(warm_times)
    plain_s = statistics.median(plain_times)
    print(
        f"track {track.name} on {device}: {len(x)} samples, eps {track.eps}, batch {track.batch_size}, "
        f"median of {args.repeat}"
    )
    print(f"  plain PyTorch loop:        {plain_s:7.3f} s   robust accuracy {robust:.3f}")
    for name, seconds, outcome in (("cold worker", fresh_s, fresh), ("warm worker", warm_s, warm)):
        robust_arena = outcome.metrics["robust_accuracy"]
        print(
            f"  arena match, {name}:  {seconds:7.3f} s   robust accuracy {robust_arena:.3f}   "
            f"overhead {seconds - plain_s:.3f} s ({seconds / plain_s:.2f}x)"
        )


if __name__ == "__main__":
    main()
