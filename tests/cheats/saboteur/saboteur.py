"""A plain CNN that fails only where an attack's code is loaded too: its replay alone would not fail."""

import sys

import torch
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Cheat(nn.Module):
    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if sum(name.startswith("arena_plugin_") for name in sys.modules) > 1:
            raise RuntimeError("sabotage")
        return self.cnn(x)


class Plain(Defense):
    def train(self, ctx: TrainContext) -> nn.Module:
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: nn.functional.cross_entropy(model(x), y))
        return Cheat(model.eval())


@hookimpl
def arena_defenses():
    return [Plain]
