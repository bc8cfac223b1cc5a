"""The physical world, simulated: every image a defense judges is printed and photographed first.

Kurakin, Goodfellow and Bengio ("Adversarial examples in the physical world", ICLR 2017) printed clean
and adversarial images, photographed them with a phone and classified the photos: single-step FGSM kept
more of its effect than iterative methods, whose finer perturbations the photo washed out. A track with
``transform = "print-photo"`` makes every image the defense sees go through a simulation of that step,
in this order: a small affine warp (the camera's pose and the crop), a Gaussian blur (focus), contrast
and brightness (exposure), sensor noise, and JPEG compression, then the track's pixel grid.

Each image gets its own draw of these parameters, made from the arena's secret (:class:`arena.rules.evaluation.EvalSet`
carries the seed, which no plugin receives), so an attack cannot invert one fixed draw; the published ranges
(:class:`PrintAndPhoto`, configurable per track with ``photo = {...}`` in tracks.toml) let attacks plan for the
whole distribution (EOT). A clean image and its adversarial version are photographed under the same draw,
as on one printed sheet. Queries are photographed too, each under a fresh draw: a defense cannot tell a query
from a judged image by its look.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from arena.rules.referee import quantize

#: what a track's ``transform`` may be
TRANSFORMS = ("none", "print-photo")


@dataclass(frozen=True)
class PrintAndPhoto:
    """The ranges each image's draw comes from (sizes are fractions of the image's side; uniform draws)."""

    rotate: float = 4.0  # degrees, either way
    scale: float = 0.05  # zoom in or out by up to this share
    shift: float = 0.04  # either way, each axis
    blur: float = 0.8  # Gaussian sigma in pixels, drawn in [blur / 4, blur]
    contrast: float = 0.15  # contrast changed by up to this share, either way
    brightness: float = 0.08  # added to every pixel, either way
    noise: float = 0.02  # standard deviation of the sensor's noise
    jpeg_low: float = 60.0  # JPEG quality drawn in [jpeg_low, jpeg_high]
    jpeg_high: float = 90.0

    @classmethod
    def of(cls, params: Mapping[str, object]) -> PrintAndPhoto:
        """The ranges with ``params`` (a track's ``photo`` table) replacing the defaults; ValueError names
        a wrong one."""
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"photo: unknown parameter(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
        for name, value in params.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"photo.{name} must be a number >= 0, not {value!r}")
        made = cls(**{name: float(value) for name, value in params.items()})  # type: ignore[arg-type]
        if not 1 <= made.jpeg_low <= made.jpeg_high <= 100:
            raise ValueError("photo: JPEG qualities need 1 <= jpeg_low <= jpeg_high <= 100")
        return made


def photograph(images: torch.Tensor, seed: int, how: PrintAndPhoto, levels: int) -> torch.Tensor:
    """``images`` (N, C, H, W in [0, 1]) printed and photographed, image ``i`` under draw ``i`` of ``seed``,
    on the grid of ``levels``. The same seed gives the same draws, whatever the images."""
    n = len(images)
    generator = torch.Generator().manual_seed(seed)
    u = 2 * torch.rand(n, 8, generator=generator) - 1  # per image: 8 uniform draws in [-1, 1]
    sensor = torch.randn(images.shape, generator=generator) * how.noise
    x = _warp(images.detach().cpu().float(), u[:, :4], how)
    x = _blur(x, how.blur / 4 + (u[:, 4] + 1) / 2 * how.blur * 3 / 4)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1 + u[:, 5] * how.contrast).view(-1, 1, 1, 1)
    brightness = (u[:, 6] * how.brightness).view(-1, 1, 1, 1)
    x = ((x - mean) * contrast + mean + brightness + sensor).clamp(0, 1)
    quality = how.jpeg_low + (u[:, 7] + 1) / 2 * (how.jpeg_high - how.jpeg_low)
    x = torch.stack([_jpeg(image, int(round(float(q)))) for image, q in zip(x, quality, strict=True)])
    return quantize(x, levels).to(images.device)


def _warp(images: torch.Tensor, u: torch.Tensor, how: PrintAndPhoto) -> torch.Tensor:
    """Rotation, zoom and shift from the draws ``u`` (N, 4) in [-1, 1]."""
    angle = u[:, 0] * math.radians(how.rotate)
    scale = 1 + u[:, 1] * how.scale
    shift_x, shift_y = u[:, 2] * how.shift * 2, u[:, 3] * how.shift * 2  # affine_grid spans 2 across
    theta = torch.stack(
        [
            torch.stack([angle.cos() / scale, -angle.sin() / scale, shift_x], dim=1),
            torch.stack([angle.sin() / scale, angle.cos() / scale, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A Gaussian blur of its own ``sigma`` per image (a separable 5-tap kernel, reflected edges)."""
    n, c, h, w = images.shape
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N * C, 5)
    flat = F.pad(images.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, 5), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 5, 1), groups=n * c)
    return flat.view(n, c, h, w)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """One image (C, H, W) through JPEG at ``quality``, back in [0, 1]."""
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
    return torch.from_numpy(decoded[None] if decoded.ndim == 2 else np.moveaxis(decoded, -1, 0).copy())
