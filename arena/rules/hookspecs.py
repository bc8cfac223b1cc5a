"""The plugin contract: the hooks a plugin implements and the classes it subclasses.

Read this file first. A plugin is a folder with a ``plugin.toml`` manifest and a Python module whose
functions are marked with :data:`hookimpl`. The arena calls the registration hooks below, takes the
classes they return, and plays them against each other:

* an **attack** subclasses :class:`Attack` and implements :meth:`Attack.run`;
* a **defense** subclasses :class:`Defense` and implements :meth:`Defense.train`.

What an attack may see is a :class:`Target` (built by the arena for the threat model) and a
:class:`Budget`; what a defense may use to train is a :class:`TrainContext`. Everything else
(projection onto the budget, scoring, counting queries) is the referee's job, never a plugin's.
"""

from __future__ import annotations

import abc
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType
from typing import Any, ClassVar, Literal

import pluggy
import torch
from torch import nn

from arena.rules import referee
from arena.rules.distortions import Distortion, distort, min_move
from arena.rules.physical import PrintAndPhoto, photograph

PROJECT = "arena"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Norm = Literal["linf", "l2", "l0"]
Threat = Literal["white-box", "gray-box", "black-box"]

NORMS: tuple[str, ...] = ("linf", "l2", "l0")
THREATS: tuple[str, ...] = ("white-box", "gray-box", "black-box")


class ThreatModelError(PermissionError):
    """An attack asked for something its threat model does not give it."""


class QueryBudgetExceeded(RuntimeError):
    """An attack asked for more queries than its budget allows."""


class DefenseFailed(RuntimeError):
    """The defended model (the defense's own code) raised or returned garbage for a valid batch of images.

    The arena replays the batch in a process of its own; when the defense fails there too, the match
    counts against the defense, whatever the attack does next (it may catch this and carry on).
    """


# --------------------------------------------------------------------------------------------------
# Parameters: stated once, in the manifest's [params] table
# --------------------------------------------------------------------------------------------------


class Configured:
    """What attacks and defenses share: the parameters of their manifest's ``[params]`` table.

    The manifest states each parameter once, with its value; nothing in the code repeats it. The arena passes
    them as keyword arguments, and a class built by hand (``PGD()``, or ``PGD(steps=5)`` to change one) takes the
    rest from the ``plugin.toml`` of its plugin's folder. Each becomes an attribute (``self.steps``) and an entry
    of ``self.params``. Override :meth:`check_params` to refuse a value out of range. (A constructor of the
    plugin's own that passes parameters on, as plugins wrote before, still works: what it passes wins.)
    """

    def __init__(self, **params: Any) -> None:
        self.params = (manifest_params(type(self)) or {}) | params
        for key, value in self.params.items():
            setattr(self, key, value)
        self.check_params()

    def check_params(self) -> None:
        """Raise ``ValueError`` for a parameter out of range (called once they are set); here, every value goes."""


def manifest_params(cls: type) -> dict[str, Any] | None:
    """The ``[params]`` of the ``plugin.toml`` beside the module that defines ``cls`` (or one folder up, for a
    module that is a package), or None where there is no such manifest (a class outside any plugin folder)."""
    for klass in cls.__mro__:
        functions = [f for f in vars(klass).values() if isinstance(f, FunctionType)]
        if klass.__module__.split(".")[0] != "arena" and functions:
            module_file = Path(functions[0].__code__.co_filename)
            for folder in (module_file.parent, module_file.parent.parent):
                if (folder / "plugin.toml").is_file():
                    manifest = tomllib.loads((folder / "plugin.toml").read_text(encoding="utf-8"))
                    return dict(manifest.get("params", {}))
            return None
    return None


# --------------------------------------------------------------------------------------------------
# What an attack receives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The limits of one attack call, set by the arena and enforced by the referee.

    ``eps`` is measured in ``norm`` ("linf", "l2", or "l0": the number of changed pixels).
    ``targets`` holds one target label per sample for targeted attacks (the same for every
    attack; ``None`` for untargeted ones). ``max_queries`` is the number of images per sample the
    attack may send to :meth:`Target.query`. ``generator`` is seeded by the arena: draw all
    randomness from it and the attack is reproducible. The images lie on a grid of ``levels`` grey
    levels (``k / (levels - 1)``); the referee rounds what the attack returns onto that grid, towards
    the clean value where rounding to the nearest level would leave the budget, and so does
    :meth:`Target.query`: :meth:`snap` shows exactly what the defense will see. On a physical track,
    ``photo`` holds the published ranges of the print-and-photo step that every judged image and every
    query goes through before the defense sees it, each under its own secret draw;
    ``arena.rules.physical.photograph(x, seed, budget.photo, budget.levels)`` makes draws of your own (for EOT).
    """

    norm: str
    eps: float
    max_queries: int
    generator: torch.Generator
    targets: torch.Tensor | None = None
    levels: int = 256
    photo: PrintAndPhoto | None = None

    def snap(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the referee makes of ``x_adv`` for clean ``x``: clipped, projected onto the budget, on the grid."""
        projected, _ = referee.project(x_adv, x, self.norm, self.eps)
        return referee.quantize_within(projected, x, self.levels, self.norm, self.eps)


class Target(abc.ABC):
    """What an attack may see of the defense it attacks; built by the arena for one threat model.

    ============  ==========================  ==============  =============================
    threat        ``model``                   ``query``       ``substitute``
    ============  ==========================  ==============  =============================
    white-box     the defended model          yes             an undefended, other model
    gray-box      a twin (other secret seed)  yes             an undefended, other model
    black-box     raises ThreatModelError     yes             an undefended, other model
    ============  ==========================  ==============  =============================
    """

    threat: str
    num_classes: int
    input_shape: tuple[int, ...]
    device: torch.device

    @property
    @abc.abstractmethod
    def model(self) -> nn.Module:
        """A differentiable model mapping images in [0, 1] to logits (white-box and gray-box only)."""

    @property
    @abc.abstractmethod
    def substitute(self) -> nn.Module:
        """An undefended model of another architecture, trained by the arena on the training split."""

    @abc.abstractmethod
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the secret defended model for ``x``; every image counts as one query."""

    @property
    @abc.abstractmethod
    def queries_used(self) -> int:
        """Images sent to :meth:`query` so far in this match."""

    @property
    @abc.abstractmethod
    def queries_left(self) -> int:
        """Images that :meth:`query` still accepts in this call."""

    @property
    @abc.abstractmethod
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The track's public training split ``(x, y)``, to train substitutes of your own."""

    @property
    @abc.abstractmethod
    def public_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The track's public held-out split ``(x, y)``: the published originals that the secret evaluation
        images are distortions of (what a defense could carry; :func:`arena.neighbor_points` uses it)."""


class Attack(Configured, abc.ABC):
    """Base class of attacks.

    Subclasses set the class attributes and implement :meth:`run`; the manifest's ``[params]`` arrive as
    attributes (see :class:`Configured`).
    """

    #: norms the attack can respect ("linf", "l2", "l0")
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    #: threat models the attack can play under
    threats: ClassVar[tuple[str, ...]] = ("white-box", "gray-box")
    #: whether the attack aims at ``budget.targets`` rather than at any wrong class
    targeted: ClassVar[bool] = False

    @abc.abstractmethod
    def run(self, target: Target, x: torch.Tensor, y: torch.Tensor, budget: Budget) -> torch.Tensor:
        """Return adversarial examples for the batch ``x`` (N, C, H, W) in [0, 1] with labels ``y``.

        The result must have the shape of ``x`` and a floating dtype; the referee clips it to
        [0, 1], projects it onto the budget and records every sample it had to change.
        """


# --------------------------------------------------------------------------------------------------
# What a defense receives
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainContext:
    """Everything a defense may use to train: the training split, a model factory, device, seed, time.

    The evaluation split is never here. ``make_model()`` builds the track's reference architecture
    (untrained, on ``device``); a defense may bring its own architecture instead. Every image the
    model will see lies on a grid of ``levels`` grey levels (``k / (levels - 1)``). Where the track
    evaluates a secret distortion of its held-out images, ``distortion`` is its (public) family and
    :meth:`augment` draws from it: a model trained on such images keeps its accuracy on the evaluation's. On a
    physical track ``photo`` holds the published ranges of its print-and-photo step and :meth:`photograph` draws
    from them: what the defense will see of every image.
    """

    track: str
    num_classes: int
    input_shape: tuple[int, ...]
    norm: str
    eps: float
    x: torch.Tensor
    y: torch.Tensor
    make_model: Callable[[], nn.Module]
    device: torch.device
    seed: int
    time_budget: float
    epochs: int
    levels: int = 256
    distortion: Distortion | None = None
    photo: PrintAndPhoto | None = None
    generator: torch.Generator = field(init=False)
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def batches(self, batch_size: int = 128, augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled pass over the training split, as ``(x, y)`` batches on ``device``; with ``augment``,
        each batch under fresh draws of the track's distortion (see :meth:`augment`)."""
        order = torch.randperm(len(self.x), generator=self.generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            x = self.x[index].to(self.device)
            yield self.augment(x) if augment else x, self.y[index].to(self.device)

    def fit(
        self,
        model: nn.Module,
        loss_of: Callable[..., torch.Tensor],
        *,
        lr: float = 1e-3,
        batch_size: int = 128,
        epochs: int | None = None,
        augment: bool = False,
        deadline: float | None = None,
        batches: Callable[[], Iterable[tuple[torch.Tensor, ...]]] | None = None,
        name: str = "",
    ) -> bool:
        """Adam at ``lr`` on ``loss_of(*batch)`` for ``epochs`` epochs (default :attr:`epochs`) or until ``deadline``
        (a :func:`time.monotonic` time; default: :attr:`time_budget` from now), whichever comes first; True when
        every epoch ran. An epoch is one pass over ``batches()``, by default :meth:`batches` of ``batch_size``
        (with ``augment``). Logs each epoch's last loss, or the epoch the deadline stopped, after ``name``. The
        model is put in training mode first (``loss_of`` may switch it, e.g. to attack it, and back)."""
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        deadline = time.monotonic() + self.time_budget if deadline is None else deadline
        epochs = self.epochs if epochs is None else epochs
        prefix = f"{name}: " if name else ""
        for epoch in range(1, epochs + 1):
            for batch in batches() if batches is not None else self.batches(batch_size, augment):
                if time.monotonic() > deadline:
                    self.log(f"{prefix}time budget spent in epoch {epoch}/{epochs}: stopping")
                    return False
                loss = loss_of(*batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            self.log(f"{prefix}epoch {epoch}/{epochs}: last batch loss {loss.item():.4f}")
        return True

    def photograph(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` printed and photographed under fresh public draws (from :attr:`generator`) of the track's ranges,
        as every judged image is; ``x`` itself off a physical track (``photo`` is None)."""
        if self.photo is None:
            return x
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
        return photograph(x.cpu(), seed, self.photo, self.levels).to(x.device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` under fresh draws (from :attr:`generator`) of the family of distortions the track evaluates.

        Each image moves as far as an evaluation image does from its original (see
        :func:`arena.rules.distortions.distort`) and lies on the grid; ``x`` itself where the track evaluates
        public or private images (``distortion`` is None).
        """
        if self.distortion is None:
            return x
        chosen = torch.arange(len(x))
        return distort(x, self.generator, self.distortion, chosen, self.levels, min_move(self.norm, self.eps))


class Defense(Configured, abc.ABC):
    """Base class of defenses.

    :meth:`train` returns a module mapping images in [0, 1] to logits. That module may also define
    ``reject(x) -> BoolTensor`` (a detector): a rejected adversarial input counts for the defense, a
    rejected clean input against its clean accuracy. A defense whose module draws randomness at
    inference sets ``randomized = True`` and is evaluated over several draws.
    """

    randomized: ClassVar[bool] = False

    @abc.abstractmethod
    def train(self, ctx: TrainContext) -> nn.Module:
        """Train on ``ctx``'s training split and return the defended model."""


# --------------------------------------------------------------------------------------------------
# Registration hooks: each returns a list; the arena flattens them.
# --------------------------------------------------------------------------------------------------


@hookspec
def arena_attacks() -> list[type[Attack]]:
    """Return the attack classes this plugin provides."""


@hookspec
def arena_defenses() -> list[type[Defense]]:
    """Return the defense classes this plugin provides."""
