"""Training defenses, twins and substitutes into artifacts, and loading artifacts back.

A defense trains in its sandbox through ``Defense.train(ctx)``; the module it returns is checked and
saved whole (``torch.save``), so a defense may bring its own architecture. Loading an artifact first
imports the defense's code (from its stored archive) so its classes can be found again.
"""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.rules.distortions import DISTORTIONS
from arena.rules.hookspecs import Defense, TrainContext
from arena.rules.tracks import Track
from arena.sandbox import PluginFailure, Sandbox

#: bump when training by the arena changes: artifacts are cached under it
TRAINING_VERSION = "1"
SUBSTITUTE_SEED = 1234
MIB = 1024**2


def pick_device() -> torch.device:
    """The worker's accelerator when it has one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_model(model: nn.Module) -> bytes:
    """The whole module (architecture and weights), on the CPU, as bytes."""
    buffer = io.BytesIO()
    torch.save(model.to("cpu").eval(), buffer)
    return buffer.getvalue()


def load_model(data: bytes, device: torch.device, defense: PluginSource | None, cache_dir: Path) -> nn.Module:
    """Load an artifact saved by :func:`save_model`, importing the defense's code first when given."""
    if defense is not None:
        plugins.load(defense, cache_dir)
    model = torch.load(io.BytesIO(data), map_location=device, weights_only=False, pickle_module=_Renamed)
    if not isinstance(model, nn.Module):
        raise TypeError(f"artifact holds {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


class _Renamed:
    """``pickle`` for :func:`torch.load`, reading the modules of artifacts saved before ``arena/`` was laid out by
    job under their present names (a model saved whole names the module of each class, e.g. ``ReferenceCNN``'s)."""

    MOVED = {"arena.tracks": "arena.rules.tracks"}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(_Renamed.MOVED.get(module, module), name)

    load = pickle.load
    dumps = pickle.dumps


def check_model(model: object, x: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``model`` maps a batch of images to finite logits of the right shape."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"train() returned {type(model).__name__}, expected a torch.nn.Module")
    with torch.no_grad():
        logits = model.eval()(x)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(x), num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the trained model returns {shape}, expected logits shaped ({len(x)}, {num_classes})")
    if not torch.isfinite(logits).all():
        raise ValueError("the trained model returns NaN or infinite logits")


@dataclass(frozen=True)
class TrainSpec:
    """Everything a defense's training needs, picklable into its sandbox."""

    source: PluginSource
    track: Track
    seed: int
    data_dir: Path
    cache_dir: Path


def train_defense(spec: TrainSpec) -> tuple[bytes, dict[str, Any]]:
    """Train a defense (or its twin, with another seed) in its sandbox; raise ``PluginFailure``.

    ``meta`` holds the training's seconds, device and epochs, and ``log_tail``: what the defense printed, if anything.
    The sandbox reads no data set: it receives the training split from here. A trained model heavier
    than the track's ``max_artifact_mb`` fails (a data set must not ride along in the weights).
    """
    x, y = spec.track.train_set(spec.data_dir)
    box = Sandbox(
        _train_setup,
        (spec, x.numpy(), y.numpy()),
        time_limit=spec.track.time_limit,
        label=spec.source.label,
        writable=(spec.cache_dir,),
    )
    with box:
        data, meta = box.call(("train",))
    if box.log_tail:  # what the defense printed (``ctx.log``): its job keeps it, for the check and the team
        meta["log_tail"] = box.log_tail
    limit = spec.track.max_artifact_mb
    if not isinstance(data, bytes) or len(data) > limit * MIB:
        size = f"{len(data) / MIB:.1f} MiB" if isinstance(data, bytes) else type(data).__name__
        limit_text = f"over the track's limit of {limit:g} MiB"
        raise PluginFailure(f"{spec.source.label}: the trained model weighs {size}, {limit_text}")
    return data, meta


def _train_setup(_conn: Connection, spec: TrainSpec, x_train: np.ndarray, y_train: np.ndarray):  # noqa: ANN202
    device = pick_device()
    plugin = plugins.load(spec.source, spec.cache_dir)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)

    def handle(_request: object) -> tuple[bytes, dict[str, Any]]:
        torch.manual_seed(spec.seed)
        defense = plugin.instantiate()
        assert isinstance(defense, Defense)
        ctx = TrainContext(
            track=spec.track.name,
            num_classes=spec.track.num_classes,
            input_shape=spec.track.input_shape,
            norm=spec.track.norm,
            eps=spec.track.eps,
            x=x,
            y=y,
            make_model=lambda: spec.track.make_reference().to(device),
            device=device,
            seed=spec.seed,
            time_budget=spec.track.time_limit * 0.9,
            epochs=spec.track.epochs,
            levels=spec.track.levels,
            distortion=DISTORTIONS[spec.track.dataset] if spec.track.evaluation == "transformed" else None,
            photo=spec.track.photo_ranges if spec.track.transform != "none" else None,
        )
        started = time.perf_counter()
        model = defense.train(ctx)
        seconds = time.perf_counter() - started
        check_model(model, ctx.x[:16].to(device), spec.track.num_classes)
        return save_model(model), {"seconds": seconds, "device": str(device), "epochs": ctx.epochs}

    return handle


def train_substitute(track: Track, data_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """Train the track's substitute (an undefended model of another architecture): the arena's own code."""
    device = pick_device()
    x, y = track.train_set(data_dir)
    torch.manual_seed(SUBSTITUTE_SEED)
    model = track.make_substitute().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SUBSTITUTE_SEED)
    started = time.perf_counter()
    model.train()
    for _ in range(track.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 128):
            index = order[start : start + 128]
            loss = nn.functional.cross_entropy(model(x[index].to(device)), y[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    return save_model(model), {"seconds": seconds, "device": str(device), "epochs": track.epochs}
