"""The images a track evaluates: data no plugin can look up, every image on the data's grid.

The held-out splits of digits and MNIST are public, so a defense that carries them (in its folder, its
weights, or read from an installed package) could answer by recognising the image instead of being
robust. By default (``evaluation = "transformed"``) a track therefore evaluates a *secret distortion*
of its held-out split: which images are drawn, and how each one is distorted, derive from the arena's
secret. Each image gets

* an affine warp: a rotation of up to ``rotate`` degrees, a scaling by up to ``scale``, a shift of up
  to ``shift`` of the image's side (uniform draws), resampled bilinearly or to the nearest pixel;
* a smooth elastic warp: Gaussian displacements of ``elastic`` (a fraction of the side) on a
  ``grid`` x ``grid`` lattice, interpolated over the image;
* Gaussian sensor noise of standard deviation ``noise``;

and is then quantised to the track's pixel grid. An image that stays within ``MIN_MOVE`` (or an L-inf
track's eps) of its original is drawn again, more strongly, so that no lookup within the budget finds
it. On an L-inf or L2 track without a print-and-photo step, an image whose budget ball a lookup of the
public originals of any radius would hold (:func:`arena.rules.neighbors.breakable`) becomes the least distorted
of up to ``DRAWS - 1`` further draws whose ball none holds (issue 24). The same secret gives the same
images (results stay cacheable, every plugin meets the same images); a new secret starts afresh.
``public`` evaluates the published split as it is (to compare
with papers); ``private`` reads an instructor's own ``.npz``.

The planner builds a track's set once, in the process that holds the secret, and stores it as an
artifact; workers and sandboxes never see the secret, the data folder or the distortion's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from arena.rules.data import Dataset
from arena.rules.distortions import DISTORTIONS, distort, min_move
from arena.rules.hookspecs import Budget
from arena.rules.neighbors import breakable
from arena.rules.referee import quantize
from arena.rules.seeds import derive_seed
from arena.rules.tracks import EVAL_SEED, Track, TrackError, fixed_targets
from arena.store.records import pack, unpack

#: bump when the distortion or the drawing of images changes: evaluation sets are keyed under it
EVALUATION_VERSION = "3"
#: candidate draws of each image's distortion (the first is kept unless a lookup of the public originals holds
#: its budget ball, see :func:`_unheld`); their seeds are drawn as version 2 drew its one draw, so an image
#: whose first draw stands is the image version 2 evaluated
DRAWS = 16
SEED_VERSION = "2"


@dataclass(frozen=True)
class EvalSet:
    """Evaluation samples: images ``x`` on the track's grid, labels ``y``, their ``index`` in the
    source split and a fixed target label per sample for targeted attacks (never the true one); on a
    physical track, ``photo_seed``, the secret seed of its print-and-photo draws (:mod:`arena.rules.physical`)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    photo_seed: int = 0

    def pack(self, levels: int) -> bytes:
        """The set as bytes: images as grey levels (exact, since they lie on the grid)."""
        codes = torch.round(self.x * (levels - 1)).to(torch.int32).numpy()
        dtype = np.uint8 if levels <= 256 else np.uint16 if levels <= 65536 else np.int32
        arrays = {"codes": codes.astype(dtype), "y": self.y.numpy(), "index": self.index.numpy()}
        extra = {"photo_seed": np.array(self.photo_seed, dtype=np.int64)} if self.photo_seed else {}
        return pack(arrays | {"targets": self.targets.numpy(), "levels": np.array(levels)} | extra)

    @classmethod
    def unpack(cls, data: bytes) -> EvalSet:
        """Read back what :meth:`pack` wrote."""
        arrays = unpack(data)
        levels = int(arrays["levels"])
        x = torch.from_numpy(arrays["codes"].astype(np.float32)) / (levels - 1)
        photo_seed = int(arrays["photo_seed"]) if "photo_seed" in arrays else 0
        return cls(x, *(torch.from_numpy(arrays[k]).long() for k in ("y", "index", "targets")), photo_seed)


def build(track: Track, data_dir: Path, secret: bytes) -> EvalSet:
    """The evaluation set of ``track`` under the arena's ``secret`` (see the module's docstring), with the
    secret seed of its print-and-photo draws on a physical track."""
    made = _images(track, data_dir, secret)
    if track.transform == "none":
        return made
    return replace(made, photo_seed=derive_seed(secret, "photo", track.name, SEED_VERSION) or 1)


def _images(track: Track, data_dir: Path, secret: bytes) -> EvalSet:
    """The images, labels and targets of ``track``'s evaluation set."""
    if track.evaluation == "public":
        x, y, index, targets = track.eval_set(data_dir)
        return EvalSet(quantize(x, track.levels), y, index, targets)
    rng = np.random.RandomState(derive_seed(secret, "evaluation", track.dataset, SEED_VERSION))
    if track.evaluation == "private":
        x, y = _read_private(track)
        chosen = _subset(track, rng.permutation(len(y)))
        targets = fixed_targets(y, rng, track.num_classes)
        return EvalSet(x[chosen], y[chosen], chosen, targets[chosen])
    data = track.load(data_dir)
    n = len(data.y_test)
    chosen = _subset(track, rng.permutation(n))
    seeds = [int(rng.randint(2**31)) for _ in range(DRAWS)]
    away = min_move(track.norm, track.eps)

    def draw(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return distort(torch.tensor(data.x_test), generator, DISTORTIONS[track.dataset], chosen, track.levels, away)

    images = draw(seeds[0])
    if track.norm in ("linf", "l2") and track.transform == "none":
        images = _unheld(track, data, images, chosen, seeds[1:], draw)
    targets = fixed_targets(data.y_test, np.random.RandomState(EVAL_SEED), track.num_classes)
    return EvalSet(
        images,
        torch.from_numpy(data.y_test[chosen.numpy()]),
        chosen,
        torch.from_numpy(targets[chosen.numpy()]),
    )


def _unheld(
    track: Track, data: Dataset, images: torch.Tensor, chosen: torch.Tensor, seeds: list[int], draw: Callable
) -> torch.Tensor:
    """``images``, each whose budget ball a lookup of the public originals holds
    (:func:`arena.rules.neighbors.breakable`) replaced by the least distorted (in L2) of its later draws (from
    ``seeds``) whose ball none holds, if any.

    Each held image's draws are tried least distorted first (the earlier seed first on a tie), and an image leaves
    the search at its first draw that no lookup holds: the same choice as judging every draw, for a fraction of
    the nearest-neighbour searches (they dominate the set's build on MNIST).
    """
    public_x = torch.tensor(np.concatenate([data.x_train, data.x_test]))
    public_y = torch.tensor(np.concatenate([data.y_train, data.y_test]))
    budget = Budget(track.norm, track.eps, 0, torch.Generator(), levels=track.levels)
    y = torch.tensor(data.y_test[chosen.numpy()])
    rows = (~breakable(images, y, public_x, public_y, budget)).nonzero().squeeze(1)
    if not len(rows) or not seeds:
        return images
    originals = torch.tensor(data.x_test[chosen.numpy()])[rows]
    candidates = torch.stack([draw(seed)[rows] for seed in seeds])  # (draws, held images, C, H, W)
    moved = (candidates - originals).flatten(2).norm(dim=2)
    order = moved.argsort(dim=0, stable=True)
    pending = torch.arange(len(rows))
    for rank in range(len(seeds)):
        candidate = candidates[order[rank, pending], pending]
        unheld = breakable(candidate, y[rows[pending]], public_x, public_y, budget)
        images[rows[pending[unheld]]] = candidate[unheld]
        pending = pending[~unheld]
        if not len(pending):
            break
    return images


def _subset(track: Track, order: np.ndarray) -> torch.Tensor:
    """The first ``eval_size`` positions of a secret order, ascending (a smaller set is a subset of a larger)."""
    if track.eval_size > len(order):
        raise TrackError(f"track {track.name!r}: eval_size {track.eval_size} exceeds the {len(order)} images")
    return torch.from_numpy(np.sort(order[: track.eval_size]).astype(np.int64))


def _read_private(track: Track) -> tuple[torch.Tensor, np.ndarray]:
    """An instructor's evaluation set: ``x`` (N, H, W) or (N, C, H, W) and ``y`` in an ``.npz`` file.

    Integer images hold grey levels ``0 .. levels - 1``; floating ones lie in [0, 1].
    """
    path = Path(track.eval_path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = (npz[key] if key in npz.files else npz[f"{key}_test"] for key in ("x", "y"))
    except (OSError, KeyError, ValueError) as error:
        raise TrackError(f"track {track.name!r}: cannot read its private evaluation set {path}: {error}") from None
    shape = track.input_shape
    if x.ndim == len(shape):
        x = x[:, None]
    if tuple(x.shape[1:]) != shape or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise TrackError(f"track {track.name!r}: {path} holds images {x.shape} and labels {y.shape}, expected {shape}")
    if y.min(initial=0) < 0 or y.max(initial=0) >= track.num_classes:
        raise TrackError(f"track {track.name!r}: {path} has labels outside 0..{track.num_classes - 1}")
    images = x.astype(np.float32) / (track.levels - 1) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    return quantize(torch.from_numpy(images).clamp(0, 1), track.levels), y.astype(np.int64)
