"""What each built-in defense stops: reference attacks against the artifacts of bench/defense_training.py.

The attacks play white-box on the loaded defended module itself, exactly what a white-box plugin gets as
``target.model`` (BPDA stand-ins included); all but one come from torchattacks, a library independent of the
arena:

  fgsm       torchattacks FGSM at the track's eps
  pgd        torchattacks PGD (Madry): random start, 40 steps of eps / 10
  cw         the arena's own cw-l2 plugin (binary search on c, margin loss on the logits) in the track's ball
  cw-l2      torchattacks CW (c = 1, kappa = 0, 100 Adam steps of 0.1), unbounded, as in Carlini and Wagner's
             paper: robust accuracy and the mean L2 size of its successful examples
  cw-l2@2    the same examples projected onto the L2 ball of radius 2 (the mnist-l2 budget)
  transfer   black-box: torchattacks PGD on the track's substitute ("model B", trained by
             arena.play.training.train_substitute), replayed on the defense
  adaptive   MagNet only: PGD on the cross-entropy less the detectors' excess reconstruction error, so that the
             examples also evade the detectors (Carlini and Wagner, https://arxiv.org/abs/1711.08478)

Each cell is the referee's robust accuracy: the output is clipped and projected onto the ball, a rejected input
counts for the defense, and a randomized defense is classified over the track's draws, a sample counting only
if it survives every draw. "r" gives the share of adversarial inputs a detector rejected; "worst" is the arena's
defense score over the attacks within the track's budget (a sample counts only if it survives every one).

    python bench/defense_eval.py --track mnist-linf [--n 500] [--defense NAME]... [--attack NAME]...
        [--evaluation public] [--evaluation transformed]

Trains (once, cached) whatever bench/defense_training.py has not trained yet. Set ARENA_DATA_DIR for MNIST.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchattacks
from defense_training import DEFAULT_CACHE, DEFENSES, ROOT, Trained, train_or_load
from torch import nn

from arena import Budget, Target
from arena.config import Settings
from arena.contract import plugins
from arena.play.training import load_model, pick_device, train_substitute
from arena.rules import evaluation
from arena.rules.referee import classify, judge, project
from arena.rules.tracks import TRACKS, Track

ATTACKS = ("fgsm", "pgd", "cw", "cw-l2", "cw-l2@2", "transfer", "adaptive")
#: attacks whose examples the referee judges in another budget than the track's (not in "worst")
OTHER_BUDGET = {"cw-l2": None, "cw-l2@2": ("l2", 2.0)}
BATCH = 250
Craft = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class WhiteBox(Target):
    """What a white-box attack plugin sees, in this process: the defended model and the substitute."""

    threat = "white-box"

    def __init__(self, model: nn.Module, substitute: nn.Module, track: Track) -> None:
        self._model, self._substitute = model, substitute
        self.num_classes, self.input_shape, self.device = track.num_classes, track.input_shape, pick_device()

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def substitute(self) -> nn.Module:
        return self._substitute

    def query(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the bench's attacks do not query")

    @property
    def queries_used(self) -> int:
        return 0

    @property
    def queries_left(self) -> int:
        return 0

    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("the bench's attacks do not train")

    @property
    def public_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("the bench's attacks do not look up public images")


def substitute(track: Track, data_dir: Path, cache: Path) -> nn.Module:
    """The track's substitute, trained by the arena's own code (once, cached)."""
    path = cache / f"substitute-{track.name}.pt"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(train_substitute(track, data_dir)[0])
    return load_model(path.read_bytes(), pick_device(), None, cache)


def adaptive_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40) -> torch.Tensor:
    """L-inf PGD on MagNet's cross-entropy less 10 times the detectors' relative excess reconstruction error."""
    generator = torch.Generator().manual_seed(0)
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=generator).to(x.device) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        excess = (model.reconstruction_errors(x_adv) / model.thresholds - 1).clamp_min(0).flatten(1).sum(dim=1)
        loss = F.cross_entropy(model(x_adv), y, reduction="none").clamp(max=10.0) - 10.0 * excess
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        x_adv = (x + (x_adv.detach() + eps / 10 * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def crafters(track: Track, model_b: nn.Module, cache: Path) -> dict[str, Craft]:
    """Each attack as ``craft(defended_model, x, y) -> x_adv`` (before the referee's projection)."""
    eps = track.eps
    arena_cw = plugins.load(plugins.read_folder(ROOT / "plugins" / "attacks" / "cw-l2"), cache / "plugin-cache")

    def cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        budget = Budget(track.norm, eps, 0, torch.Generator(x.device).manual_seed(0))
        return arena_cw.instantiate().run(WhiteBox(model, model_b, track), x, y, budget)

    return {
        "fgsm": lambda model, x, y: torchattacks.FGSM(model, eps=eps)(x, y),
        "pgd": lambda model, x, y: torchattacks.PGD(model, eps=eps, alpha=eps / 10, steps=40, random_start=True)(x, y),
        "cw": cw,
        "cw-l2": lambda model, x, y: torchattacks.CW(model, c=1.0, kappa=0.0, steps=100, lr=0.1)(x, y),
        "transfer": lambda _model, x, y: torchattacks.PGD(model_b, eps=eps, alpha=eps / 10, steps=40)(x, y),
        "adaptive": lambda model, x, y: adaptive_pgd(model, x, y, eps),
    }


def evaluate(
    trained: Trained, track: Track, attacks: list[str], craft: dict[str, Craft], x: torch.Tensor, y: torch.Tensor
) -> dict[str, str]:
    """One row: clean accuracy and each attack's robust accuracy (``r``: share rejected) against one defense."""
    draws = track.draws if trained.randomized else 1
    model = trained.model
    clean = classify(model, x, draws)
    unmoved = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    clean_records = judge(x, y, x, unmoved, clean, clean, None)
    row = {"clean": f"{clean_records['clean_correct'].mean():.3f}"}
    worst = clean_records["clean_correct"]
    crafted: dict[str, torch.Tensor] = {}
    for attack in attacks:
        if attack == "adaptive" and not hasattr(model, "reconstruction_errors"):
            row[attack] = "-"
            continue
        started = time.perf_counter()
        source = "cw-l2" if attack == "cw-l2@2" else attack
        if source not in crafted:
            batches = [craft[source](model, x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
            crafted[source] = torch.cat(batches)
        budget = OTHER_BUDGET.get(attack, (track.norm, track.eps))
        x_adv, moved = (crafted[source], unmoved) if budget is None else project(crafted[source], x, *budget)
        records = judge(x, y, x_adv, moved, clean, classify(model, x_adv, draws), None)
        row[attack] = f"{records['survived'].mean():.3f}"
        if hasattr(model, "reject"):
            row[attack] += f" (r {records['adv_rejected'].mean():.2f})"
        if budget is None and records["success"].any():
            row[attack] += f" (L2 {records['l2'][records['success']].mean():.1f})"
        if attack not in OTHER_BUDGET:
            worst &= records["survived"]
        print(f"  {trained.name} / {attack}: {row[attack]} in {time.perf_counter() - started:.0f} s", flush=True)
    row["worst"] = f"{worst.mean():.3f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--track", default="mnist-linf", choices=sorted(TRACKS))
    parser.add_argument("--defense", action="append", choices=DEFENSES, help="default: all built-in defenses")
    parser.add_argument("--attack", action="append", choices=ATTACKS, help="default: all")
    parser.add_argument("--n", type=int, default=500, help="evaluation samples (the first n of the track's subset)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"artifacts (default {DEFAULT_CACHE})")
    parser.add_argument(
        "--evaluation",
        action="append",
        choices=("public", "transformed"),
        help="the images: the published split, or a secret distortion of it (arena/rules/evaluation.py) [public]",
    )
    args = parser.parse_args()
    track, data_dir = TRACKS[args.track], Settings.from_env().data_dir
    attacks = args.attack or list(ATTACKS)
    craft = crafters(track, substitute(track, data_dir, args.cache), args.cache)
    trained = {name: train_or_load(name, track, data_dir, args.cache) for name in args.defense or DEFENSES}
    for kind in args.evaluation or ["public"]:
        images = evaluation.build(dataclasses.replace(track, evaluation=kind), data_dir, b"bench")
        x, y = images.x[: args.n].to(pick_device()), images.y[: args.n].to(pick_device())
        rows = {name: evaluate(model, track, attacks, craft, x, y) for name, model in trained.items()}
        columns = ["clean", *attacks, "worst"]
        print(f"\n{track.name}, {len(x)} samples ({kind}), eps {track.eps:g} ({track.norm}): robust accuracy")
        print("| defense | " + " | ".join(columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for name, row in rows.items():
            print(f"| `{name}` | " + " | ".join(row[c] for c in columns) + " |")


if __name__ == "__main__":
    main()
