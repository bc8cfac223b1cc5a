"""Which secret distortion of digits, and whether to train on its draws: PGD training's figures under each.

For bilinear and nearest resampling of the digits distortion (arena/rules/distortions.py), trains the built-in
``pgd-adv-training`` twice (on the published training images, and on fresh draws of the family through
``TrainContext.augment``) and reports clean and PGD-40 robust accuracy (torchattacks) on the first ``n``
public held-out images and on their secret distortion. The figures are in docs/evaluation.md.

    python bench/distortion_choice.py [--n 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchattacks
from torch import nn

from arena import TrainContext
from arena.rules.distortions import DISTORTIONS, distort, min_move
from arena.rules.tracks import TRACKS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "defenses" / "pgd-adv-training" / "pgd_adv_training.py"


class AugmentedContext(TrainContext):
    """A context whose batches are always fresh draws of the distortion (as a plugin asking for them gets)."""

    def batches(self, batch_size: int = 128, augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return super().batches(batch_size, augment=True)


def figures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float]:
    """Clean and PGD-40 robust accuracy."""
    clean = (model(x).argmax(1) == y).float().mean().item()
    x_adv = torchattacks.PGD(model, eps=eps, alpha=eps / 10, steps=40, random_start=True)(x, y)
    return clean, (model(x_adv).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="held-out images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    track = TRACKS["digits"]
    data = track.load(Path())
    spec = importlib.util.spec_from_file_location("pgd_adv_training", PLUGIN)
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    x_test, y_test = torch.tensor(data.x_test), torch.tensor(data.y_test)
    chosen = torch.from_numpy(np.sort(np.random.RandomState(5).permutation(len(y_test))[: args.n]))
    print("| digits distortion, training | clean public / secret | PGD robust public / secret |")
    print("|---|---|---|")
    for resample in ("bilinear", "nearest"):
        how = dataclasses.replace(DISTORTIONS["digits"], resample=resample)
        away = min_move(track.norm, track.eps)
        secret = distort(x_test, torch.Generator().manual_seed(7), how, chosen, track.levels, away)
        for augment in (False, True):
            torch.manual_seed(0)
            ctx = (AugmentedContext if augment else TrainContext)(
                track=track.name, num_classes=track.num_classes, input_shape=track.input_shape, norm=track.norm,
                eps=track.eps, x=torch.tensor(data.x_train), y=torch.tensor(data.y_train),
                make_model=track.make_reference, device=torch.device("cpu"), seed=0, time_budget=600.0,
                epochs=track.epochs, levels=track.levels, distortion=how, log=lambda _line: None,
            )  # fmt: skip
            model = plugin.PGDAdvTraining().train(ctx)
            public = figures(model, x_test[chosen], y_test[chosen], track.eps)
            hidden = figures(model, secret, y_test[chosen], track.eps)
            training = "trained on draws of the family" if augment else "published images"
            print(
                f"| {resample}, {training} | {public[0]:.3f} / {hidden[0]:.3f} | {public[1]:.3f} / {hidden[1]:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
