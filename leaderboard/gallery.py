"""PNG images of a match's gallery: the clean image, the adversarial image, and the perturbation amplified.

A gallery (``Result.gallery``, see ``arena.rules.referee.gallery``) holds uint8 images shaped (N, C, H, W).
The perturbation is drawn amplified by one factor for the whole match, so items compare: on grey
images, red where the attack brightened a pixel and blue where it darkened it, white where it did
nothing; on colour images, mid-grey plus the amplified change.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

#: images the board draws for each gallery item
KINDS = ("clean", "adversarial", "perturbation")
#: the shortest side of a drawn image, in pixels (small images are scaled up, pixels kept sharp)
DISPLAY_SIZE = 112
#: the perturbation is amplified at most this much (a change of 1/255 becomes clearly visible)
MAX_GAIN = 64.0


def amplification(gallery: dict[str, np.ndarray]) -> float:
    """The factor that stretches the match's largest change to full contrast (at most :data:`MAX_GAIN`)."""
    delta = _delta(gallery)
    largest = int(np.abs(delta).max()) if delta.size else 0
    return MAX_GAIN if largest == 0 else min(MAX_GAIN, 255.0 / largest)


def png(gallery: dict[str, np.ndarray], item: int, kind: str) -> bytes:
    """Gallery item ``item`` drawn as ``kind`` (one of :data:`KINDS`), as PNG bytes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not 0 <= item < len(gallery["clean"]):
        raise IndexError(f"the gallery has {len(gallery['clean'])} items, not {item + 1}")
    if kind == "perturbation":
        pixels = _perturbation(_delta(gallery)[item], amplification(gallery))
    else:
        pixels = np.moveaxis(gallery[kind][item], 0, -1)  # (C, H, W) -> (H, W, C)
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    image = Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8)))
    scale = max(1, math.ceil(DISPLAY_SIZE / min(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _delta(gallery: dict[str, np.ndarray]) -> np.ndarray:
    return gallery["adversarial"].astype(np.int16) - gallery["clean"].astype(np.int16)


def _perturbation(delta: np.ndarray, gain: float) -> np.ndarray:
    """One item's change (C, H, W) as an (H, W, 3) picture."""
    change = np.clip(delta.astype(np.float32) * gain / 255.0, -1.0, 1.0)
    if change.shape[0] != 1:
        return np.round(127.5 + 127.5 * np.moveaxis(change, 0, -1))
    t = change[0]
    red = 1.0 - np.clip(-t, 0, 1)  # darkened pixels lose red and green: blue
    blue = 1.0 - np.clip(t, 0, 1)  # brightened pixels lose green and blue: red
    green = 1.0 - np.abs(t)
    return np.round(255.0 * np.stack([red, green, blue], axis=-1))
