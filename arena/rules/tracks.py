"""Tracks: the rules of one game (data set, norm, eps, budgets, clean-accuracy floor) and its models.

A :class:`Track` names everything a match depends on besides the plugins and the seed. The built-in
tracks are in :data:`TRACKS`; an instructor adds or overrides tracks in ``ARENA_HOME/tracks.toml``::

    [tracks.mnist-linf-small]
    base = "mnist-linf"          # start from a known track (optional; else give dataset, norm, eps)
    eps = 0.1
    eval_size = 200
    description = "MNIST, L-inf eps 0.1, 200 samples"

What a track evaluates is chosen by ``evaluation`` (see :mod:`arena.rules.evaluation`): by default a secret,
seeded distortion of its data set's held-out split (``transformed``), or the public held-out split as it
is (``public``), or an instructor's private set (``private``, read from ``eval_path``). Every image the
defense sees lies on the track's pixel grid (``levels`` grey levels).

Over 400 lines: a track is one dataclass with its data, models and evaluation subset; its architectures stay
here because trained artifacts name their module (``arena.play.training`` maps the old name).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.rules.data import INPUT_SHAPES, NUM_CLASSES, PIXEL_LEVELS, Dataset, DataUnavailable, load_dataset
from arena.rules.hookspecs import NORMS
from arena.rules.physical import TRANSFORMS, PrintAndPhoto

#: seed of every track's evaluation subset and targets (tracks on one data set share them)
EVAL_SEED = 0


# --------------------------------------------------------------------------------------------------
# Architectures: each is built as ``factory(input_shape, num_classes)``
# --------------------------------------------------------------------------------------------------


class ReferenceCNN(nn.Module):
    """The reference architecture: conv 3x3 (32) -> pool -> conv 3x3 (64) -> pool -> fc 128 -> logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.classifier(self.features(x))


class SubstituteMLP(nn.Sequential):
    """The substitute architecture (another family than the reference): fc 256 -> fc 256 -> logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )


#: architectures by name; a track's ``reference`` and ``substitute`` name one of these
ARCHITECTURES: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "cnn": ReferenceCNN,
    "mlp": SubstituteMLP,
}


# --------------------------------------------------------------------------------------------------
# Tracks
# --------------------------------------------------------------------------------------------------


class TrackError(ValueError):
    """A track's definition is invalid (a bad value, an unknown field, a broken ``tracks.toml``)."""


class UnknownTrack(KeyError):
    """No track has this name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


_INTEGERS = ("eval_size", "max_queries", "epochs", "draws", "batch_size", "levels")
_NUMBERS = ("eps", "clean_floor", "time_limit", "max_artifact_mb", "inference_ms")
#: a defense's inference budget per image and draw when a track sets none (``inference_ms = 0``), per data set:
#: five times what the slowest built-in defense (Defense-GAN's search) takes on the CPU of docs/defenses.md
INFERENCE_MS = {"digits": 50.0, "mnist": 200.0}
#: the rules of scoring alone, which no match reads (:meth:`Track.played_config`)
SCORING_ONLY = frozenset({"clean_floor"})
#: the rules of evaluation alone, which no training reads (:meth:`Track.training_config`)
EVALUATION_ONLY = SCORING_ONLY | {"eval_size", "max_queries", "draws", "batch_size", "inference_ms"}
#: where a track's evaluation images come from (see :mod:`arena.rules.evaluation`)
EVALUATIONS = ("transformed", "public", "private")


@dataclass(frozen=True)
class Track:
    """The rules of one game.

    ``eps`` is measured in ``norm``; ``eval_size`` test images are attacked, each with at most
    ``max_queries`` queries; a defense whose clean accuracy is below ``clean_floor`` is ranked below
    the others. Defenses train for ``epochs`` on the reference architecture (or their own);
    randomized defenses are evaluated over ``draws`` draws; attacks get batches of ``batch_size``;
    an attack call or a training job may take ``time_limit`` seconds.

    ``evaluation`` says which images are attacked: ``transformed`` (a secret distortion of the
    held-out split, the default), ``public`` (the held-out split as published) or ``private`` (the
    ``.npz`` file at ``eval_path``, which only the arena reads). Every image a defense sees is
    quantised to ``levels`` grey levels (0: the data set's own, 17 for digits, 256 for MNIST). A
    trained defense may weigh ``max_artifact_mb`` MiB at most, and answer for an image within ``inference_ms``
    milliseconds (0: the data set's default, :data:`INFERENCE_MS`; see :mod:`arena.play.watch`). ``transform =
    "print-photo"`` prints and photographs every image the defense judges (:mod:`arena.rules.physical`), with the
    ranges of ``photo``.
    """

    name: str
    dataset: str
    norm: str
    eps: float
    eval_size: int = 1000
    max_queries: int = 1000
    clean_floor: float = 0.9
    epochs: int = 2
    reference: str = "cnn"
    substitute: str = "mlp"
    draws: int = 5
    batch_size: int = 500
    time_limit: float = 1800.0
    evaluation: str = "transformed"
    eval_path: str = ""
    levels: int = 0
    max_artifact_mb: float = 16.0
    inference_ms: float = 0.0
    transform: str = "none"
    photo: dict[str, float] = field(default_factory=dict, hash=False)
    description: str = ""

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        problems = [p for f in fields if (p := _wrong_type(f.name, getattr(self, f.name))) is not None]
        if problems:
            raise TrackError(f"track {self.name!r}: " + "; ".join(problems))
        for f in _NUMBERS:  # 1 and 1.0 must give the same config(), hence the same cache keys
            object.__setattr__(self, f, float(getattr(self, f)))
        if self.levels == 0 and self.dataset in PIXEL_LEVELS:
            object.__setattr__(self, "levels", PIXEL_LEVELS[self.dataset])
        architectures = list(ARCHITECTURES)
        checks = [
            (self.dataset in INPUT_SHAPES, f"dataset {self.dataset!r} not in {list(INPUT_SHAPES)}"),
            (self.norm in NORMS, f"norm {self.norm!r} not in {list(NORMS)}"),
            (self.eps > 0, f"eps must be positive, not {self.eps}"),
            (self.norm != "linf" or self.eps <= 1, f"an linf eps above 1 allows any image, not {self.eps}"),
            (self.norm != "l0" or self.eps.is_integer(), f"an l0 eps is a whole number of values, not {self.eps}"),
            (self.eval_size >= 1, f"eval_size must be at least 1, not {self.eval_size}"),
            (self.max_queries >= 0, f"max_queries must not be negative, not {self.max_queries}"),
            (0 <= self.clean_floor <= 1, f"clean_floor must lie in [0, 1], not {self.clean_floor}"),
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.reference in ARCHITECTURES, f"reference {self.reference!r} not in {architectures}"),
            (self.substitute in ARCHITECTURES, f"substitute {self.substitute!r} not in {architectures}"),
            (self.draws >= 1, f"draws must be at least 1, not {self.draws}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}"),
            (self.time_limit > 0, f"time_limit must be positive, not {self.time_limit}"),
            (self.evaluation in EVALUATIONS, f"evaluation {self.evaluation!r} not in {list(EVALUATIONS)}"),
            (
                (self.evaluation == "private") == bool(self.eval_path),
                "a private evaluation names its file (eval_path), and only a private one does",
            ),
            (self.levels >= 2, f"levels must be at least 2, not {self.levels}"),
            (self.max_artifact_mb > 0, f"max_artifact_mb must be positive, not {self.max_artifact_mb}"),
            (self.inference_ms >= 0, f"inference_ms must not be negative, not {self.inference_ms}"),
            (self.transform in TRANSFORMS, f"transform {self.transform!r} not in {list(TRANSFORMS)}"),
            (self.transform != "none" or not self.photo, 'photo ranges need transform = "print-photo"'),
        ]
        problems = [message for ok, message in checks if not ok]
        try:
            PrintAndPhoto.of(self.photo)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise TrackError(f"track {self.name!r}: " + "; ".join(problems))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape (C, H, W) of one image."""
        return INPUT_SHAPES[self.dataset]

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return NUM_CLASSES

    @property
    def photo_ranges(self) -> PrintAndPhoto:
        """The print-and-photo ranges of a ``print-photo`` track (:mod:`arena.rules.physical`)."""
        return PrintAndPhoto.of(self.photo)

    def config(self) -> dict[str, Any]:
        """Everything that defines the track, JSON-serialisable (the description aside): for cache keys.
        A track without a transform leaves ``transform`` and ``photo`` out, and one with the default inference
        budget ``inference_ms``, so their keys stay as they were."""
        unset = {"description"} | ({"transform", "photo"} if self.transform == "none" else set())
        unset |= {"inference_ms"} if self.inference_ms == 0 else set()
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in unset}

    def played_config(self) -> dict[str, Any]:
        """What playing a match reads of the track: :meth:`config` without the clean floor (:data:`SCORING_ONLY`),
        which only scoring reads, so that a new floor ranks the same results again instead of playing them again."""
        return {key: value for key, value in self.config().items() if key not in SCORING_ONLY}

    def training_config(self) -> dict[str, Any]:
        """What training reads of the track: :meth:`config` without the rules of evaluation alone
        (:data:`EVALUATION_ONLY`), so that tracks that differ only in those (the demo's fewer images, a new floor)
        share their trained models."""
        return {key: value for key, value in self.config().items() if key not in EVALUATION_ONLY}

    @property
    def inference_seconds(self) -> float:
        """A defense's inference budget per image and draw, in seconds."""
        return (self.inference_ms or INFERENCE_MS.get(self.dataset, max(INFERENCE_MS.values()))) / 1000

    def load(self, data_dir: Path) -> Dataset:
        """The track's data set (cached per process); raises :class:`DataUnavailable` if absent."""
        return load_dataset(self.dataset, data_dir)

    def available(self, data_dir: Path) -> str | None:
        """``None`` if the track's data can be loaded from ``data_dir``, else the reason why not."""
        try:
            self.load(data_dir)
        except DataUnavailable as error:
            return str(error)
        return None

    def make_reference(self) -> nn.Module:
        """A fresh, untrained reference model."""
        return ARCHITECTURES[self.reference](self.input_shape, self.num_classes)

    def make_substitute(self) -> nn.Module:
        """A fresh, untrained substitute model (the black-box attacker's "model B")."""
        return ARCHITECTURES[self.substitute](self.input_shape, self.num_classes)

    def train_set(self, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The public training split ``(x, y)`` as new tensors (float32 images, int64 labels)."""
        data = self.load(data_dir)
        return torch.tensor(data.x_train), torch.tensor(data.y_train)

    def eval_set(self, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The public evaluation samples ``(x, y, index, targets)``: a fixed, seeded subset of the test split.

        ``index`` holds their positions in the test split (ascending); ``targets`` a fixed target
        label per sample for targeted attacks, never the true one. A test image keeps its target
        whatever the track, and a smaller ``eval_size`` gives a subset of a larger one's samples.
        Matches attack what :func:`arena.rules.evaluation.build` makes of them (by default, a secret distortion).
        """
        data = self.load(data_dir)
        n = len(data.y_test)
        if self.eval_size > n:
            raise TrackError(f"track {self.name!r}: eval_size {self.eval_size} exceeds the {n} test images")
        rng = np.random.RandomState(EVAL_SEED)
        order = rng.permutation(n)
        targets = fixed_targets(data.y_test, rng, self.num_classes)
        index = np.sort(order[: self.eval_size]).astype(np.int64)
        return (
            torch.from_numpy(data.x_test[index]),
            torch.from_numpy(data.y_test[index]),
            torch.from_numpy(index),
            torch.from_numpy(targets[index]),
        )


def fixed_targets(labels: np.ndarray, rng: np.random.RandomState, num_classes: int) -> np.ndarray:
    """A target label per sample for targeted attacks, drawn from ``rng``, never the true label."""
    return (labels + rng.randint(1, num_classes, size=len(labels))) % num_classes


def _wrong_type(field: str, value: Any) -> str | None:
    """What is wrong with the type of ``value`` for the track field ``field``, or ``None``."""
    if field == "photo":
        ok, kind = isinstance(value, dict), "a table of numbers"
    elif field in _INTEGERS:
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif field in _NUMBERS:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    else:
        ok, kind = isinstance(value, str), "a string"
    return None if ok else f"{field} must be {kind}, not {value!r}"


#: the built-in tracks; each clean floor lies at least 2 points below the lowest clean accuracy an honest built-in
#: defense reached on the secret images of 3 arenas (``bench/defense_training.py --secrets 3``, docs/defenses.md;
#: ``mnist-l2`` not measured so: it follows ``mnist-linf``)
TRACKS: dict[str, Track] = {
    track.name: track
    for track in (
        Track(
            "digits",
            dataset="digits",
            norm="linf",
            eps=0.2,
            eval_size=300,
            max_queries=200,
            clean_floor=0.87,
            epochs=30,
            batch_size=300,
            time_limit=300.0,
            description="scikit-learn's 8x8 digits, L-inf eps 0.2: fast, runs anywhere",
        ),
        Track(
            "digits-l0",
            dataset="digits",
            norm="l0",
            eps=3,
            eval_size=300,
            max_queries=500,
            clean_floor=0.87,
            epochs=30,
            batch_size=300,
            time_limit=300.0,
            description="scikit-learn's 8x8 digits, L0 eps 3: at most 3 changed pixels, 500 queries per image",
        ),
        Track(
            "digits-physical",
            dataset="digits",
            norm="linf",
            eps=0.2,
            eval_size=300,
            max_queries=200,
            clean_floor=0.8,
            epochs=30,
            batch_size=300,
            time_limit=300.0,
            transform="print-photo",
            photo={"blur": 0.5, "rotate": 3.0},
            description="scikit-learn's 8x8 digits, L-inf eps 0.2, every judged image printed and photographed",
        ),
        Track(
            "mnist-linf",
            dataset="mnist",
            norm="linf",
            eps=0.3,
            eval_size=1000,
            max_queries=1000,
            clean_floor=0.92,
            epochs=2,
            description="MNIST, L-inf eps 0.3, as in Madry's MNIST challenge",
        ),
        Track(
            "mnist-physical",
            dataset="mnist",
            norm="linf",
            eps=0.3,
            eval_size=1000,
            max_queries=1000,
            clean_floor=0.87,
            epochs=2,
            transform="print-photo",
            description="MNIST, L-inf eps 0.3, every judged image printed and photographed (Kurakin et al. 2017)",
        ),
        Track(
            "mnist-l2",
            dataset="mnist",
            norm="l2",
            eps=2.0,
            eval_size=1000,
            max_queries=1000,
            clean_floor=0.91,
            epochs=2,
            description="MNIST, L2 eps 2.0",
        ),
    )
}


def get_track(name: str, tracks: Mapping[str, Track] | None = None) -> Track:
    """The track called ``name`` among ``tracks`` (default: the built-ins)."""
    known = TRACKS if tracks is None else tracks
    try:
        return known[name]
    except KeyError:
        raise UnknownTrack(f"unknown track {name!r}; known tracks: {', '.join(sorted(known))}") from None


def _track_from_table(name: str, table: dict[str, Any], known: Mapping[str, Track]) -> Track:
    """A track from its ``[tracks.NAME]`` table, starting from ``known[table["base"]]`` if given."""
    fields = {f.name for f in dataclasses.fields(Track)} - {"name"}
    unknown = set(table) - fields - {"base"}
    if unknown:
        raise TrackError(f"unknown field(s) {sorted(unknown)}; known: base, {', '.join(sorted(fields))}")
    values = {key: value for key, value in table.items() if key != "base"}
    if "base" not in table:
        missing = {"dataset", "norm", "eps"} - set(values)
        if missing:
            raise TrackError(f'missing field(s) {sorted(missing)} (or name a base track: base = "...")')
        return Track(name=name, **values)
    base = table["base"]
    if not isinstance(base, str) or base not in known:
        raise TrackError(f"base {base!r} is not a known track; known: {', '.join(sorted(known))}")
    changed = ", ".join(f"{k} = {v}" for k, v in values.items() if k != "eval_path")  # a server path stays unsaid
    values.setdefault("description", f"{base} with {changed}")
    return dataclasses.replace(known[base], name=name, **values)


def load_tracks(home: Path) -> dict[str, Track]:
    """The built-in tracks plus those defined (or redefined) in ``home/tracks.toml``, if it exists."""
    tracks = dict(TRACKS)
    path = Path(home) / "tracks.toml"
    if not path.is_file():
        return tracks
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TrackError(f"{path}: not valid TOML: {error}") from error
    unknown = set(document) - {"tracks"}
    if unknown:
        raise TrackError(f"{path}: unknown key(s) {sorted(unknown)}; define tracks in [tracks.NAME] tables")
    tables = document.get("tracks", {})
    if not isinstance(tables, dict):
        raise TrackError(f"{path}: 'tracks' must hold [tracks.NAME] tables")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise TrackError(f"{path}: tracks.{name} must be a table, [tracks.{name}]")
        try:
            tracks[name] = _track_from_table(name, table, tracks)
        except TrackError as error:
            raise TrackError(f"{path}: [tracks.{name}]: {error}") from None
    return tracks
