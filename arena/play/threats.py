"""What an attack sees under each threat model, and the arena's side of ``query``.

:class:`ArenaTarget` lives in the attack's process. Its ``query`` crosses a pipe to the arena's
process, where :class:`QueryServer` counts every image against the budget and passes the query on
to the secret defended model (in its own sandbox, see :mod:`arena.play.match`). Under black-box the
attack's process never loads the defended model at all: no attribute, garbage-collector walk or
frame inspection can reach parameters that are not there.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import nn

from arena.rules.hookspecs import DefenseFailed, QueryBudgetExceeded, Target, ThreatModelError
from arena.rules.referee import quantize
from arena.sandbox import wire


class QueryServer:
    """Counts an attack's queries and passes those within budget to the secret model's ``answer``.

    A query reaches the model as the referee would judge it: clipped to [0, 1] and on the track's grid of
    ``levels`` grey levels (and through ``look`` where the track changes what the defense sees, e.g. a
    physical track's photograph), so a defense cannot tell an attack's probe from an image it is judged on.
    """

    def __init__(
        self,
        answer: Callable[[np.ndarray], np.ndarray],
        input_shape: tuple[int, ...],
        levels: int,
        look: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self._answer = answer
        self._input_shape = tuple(input_shape)
        self._levels = levels
        self._look = look
        self.allowance = 0
        self.used = 0
        self.total = 0

    def allow(self, images: int) -> None:
        """Open a new attack call that may send ``images`` images."""
        self.allowance = images
        self.used = 0

    def __call__(self, x: object) -> wire.QueryAnswer | wire.QueryRefused:
        """One query, as it arrives from the pipe: answered, or refused (a malformed batch, the budget spent)."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != len(self._input_shape) + 1:
            shape = ", ".join(map(str, self._input_shape))
            return wire.QueryRefused("value", f"query expects a float32 batch shaped (k, {shape})")
        if tuple(x.shape[1:]) != self._input_shape or not np.isfinite(x).all():
            return wire.QueryRefused("value", f"query got shape {tuple(x.shape)} or non-finite values")
        if self.used + len(x) > self.allowance:
            return wire.QueryRefused("budget", f"query budget exhausted: {self.used} of {self.allowance} images used")
        seen = quantize(torch.from_numpy(x), self._levels)
        probs = self._answer((self._look(seen) if self._look is not None else seen).numpy())
        self.used += len(x)
        self.total += len(x)
        return wire.QueryAnswer(probs, self.used, self.allowance - self.used)


def image_problem(x: object, input_shape: tuple[int, ...]) -> str | None:
    """Why ``x`` is no valid batch of images for a defense (float, shaped (k, *input_shape), finite, in [0, 1])."""
    if not isinstance(x, torch.Tensor | np.ndarray):
        return f"a {type(x).__name__}, not a tensor"
    array = torch.as_tensor(x).detach()
    if not array.dtype.is_floating_point or tuple(array.shape[1:]) != tuple(input_shape) or array.dim() < 2:
        return f"a {array.dtype} tensor shaped {tuple(array.shape)}, not a float batch shaped (k, {input_shape})"
    if not torch.isfinite(array).all() or array.min() < -1e-6 or array.max() > 1 + 1e-6:
        return "values outside [0, 1] or not finite"
    return None


def output_problem(method: str, output: object, n: int, num_classes: int) -> str | None:
    """Why a defense's ``forward`` (logits) or ``reject`` (a mask) output for ``n`` images is garbage."""
    expected = (n, num_classes) if method == "forward" else (n,)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        return f"its {method} returned {shape}, expected a tensor shaped {expected}"
    if method == "forward" and not torch.isfinite(output).all():
        return "its forward returned NaN or infinite logits"
    return None


def notify(conn: Connection, payload: tuple) -> None:
    """A one-way notice to the arena (:class:`arena.play.watch.DefenseWatch`): no reply comes."""
    conn.send(wire.service(wire.NOTICE, payload))


class _Boundary(torch.autograd.Function):
    """The identity at the edge of the defense's graph: its backward pass tells the arena that the gradient
    enters the defense's code (at the model's output) or leaves it (at the model's input)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conn: Connection, payload: tuple) -> torch.Tensor:  # noqa: D102
        ctx.conn, ctx.payload = conn, payload
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: D102
        notify(ctx.conn, ctx.payload)
        return grad, None, None


class GuardedModel(nn.Module):
    """The defended model (or the twin) as an attack holds it; it computes exactly what the model computes.

    Around the defense's code (``forward``, ``reject`` and the backward pass through the model) the guard
    tells the arena when it starts and ends (:mod:`arena.play.watch`), so that the time it takes is not charged to
    the attack and a process that dies in it is replayed with the defense apart. When the defense's
    ``forward`` or ``reject`` raises or returns garbage for a valid batch of images, the guard sends the batch
    to the arena, which replays it in a process without the attack's code (a forged failure cannot pass that)
    and, when the defense fails there too, counts the match against the defense; then the guard raises
    :class:`DefenseFailed`. Every other attribute is the model's own (``inner`` is the model itself: an attack
    that calls it unguarded answers for what happens in it).
    """

    def __init__(self, model: nn.Module, conn: Connection, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.inner = model
        self._conn, self._input_shape, self._num_classes = conn, tuple(input_shape), num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._guarded("forward", x)

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            value = getattr(super().__getattr__("inner"), name)
        return functools.partial(self._guarded, "reject") if name == "reject" and callable(value) else value

    def _guarded(self, method: str, x: torch.Tensor) -> torch.Tensor:
        call = self.inner if method == "forward" else self.inner.reject
        images = len(x) if isinstance(x, torch.Tensor) and x.dim() > 0 else 0
        backward = method == "forward" and isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
        notify(self._conn, wire.enter(images, "forward"))
        try:
            output = call(_Boundary.apply(x, self._conn, wire.LEAVE) if backward else x)
        except Exception as exc:  # the defense's code failed: the arena decides whose fault it is
            notify(self._conn, wire.LEAVE)
            raise self._report(method, x, f"{type(exc).__name__}: {exc}") from exc
        notify(self._conn, wire.LEAVE)
        problem = output_problem(method, output, len(x), self._num_classes)
        if problem is not None:
            raise self._report(method, x, problem)
        if backward and output.requires_grad:
            output = _Boundary.apply(output, self._conn, wire.enter(images, "backward"))
        return output

    def _report(self, method: str, x: torch.Tensor, problem: str) -> Exception:
        invalid = image_problem(x, self._input_shape)
        if invalid is not None:
            return ValueError(f"the attack gave the model {invalid}, and the defense's {method} failed: {problem}")
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        grad = bool(x.requires_grad and torch.is_grad_enabled())
        self._conn.send(wire.service(wire.DEFENSE_FAULT, (batch, grad, method, problem)))
        confirmed = self._conn.recv()
        said = (
            "reproduced by the arena: the match counts against the defense"
            if confirmed
            else "not reproduced: the match is played again with the defense apart"
        )
        return DefenseFailed(f"the defense's {method} failed on a valid batch: {problem} ({said})")


class _Apart(torch.autograd.Function):
    """The defended model's forward pass in its host, and the backward pass too (a vector-Jacobian product
    asked of the host, which runs the forward again from the same seed)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, model: RemoteModel) -> torch.Tensor:  # noqa: D102
        ctx.model, ctx.seed = model, secrets.randbits(63)
        ctx.save_for_backward(x)
        return model.ask("forward", x, seed=ctx.seed)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        return ctx.model.ask("vjp", x, grad, seed=ctx.seed), None


class RemoteModel(nn.Module):
    """The defended model (or the twin) when a match is played again with the defense apart.

    Its code runs in a host of its own, never in the attack's process: the model answers ``forward`` (with
    gradients), ``reject`` if the defense has one, ``eval()`` and ``train()``; it holds no parameters of the
    defense (a placeholder parameter tells its device). A match is played so when the defense's code failed
    or stalled in the attack's process and the arena could not reproduce it on its own (:mod:`arena.play.watch`).
    """

    def __init__(self, conn: Connection, input_shape: tuple[int, ...], has_reject: bool, device: torch.device):
        super().__init__()
        self._conn, self._input_shape, self._has_reject = conn, tuple(input_shape), has_reject
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        problem = image_problem(x, self._input_shape)
        if problem is not None:
            raise ValueError(f"the attack gave the model {problem}")
        if x.requires_grad and torch.is_grad_enabled():
            return _Apart.apply(x, self)
        return self.ask("forward", x, seed=secrets.randbits(63))

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        """The defense's detector's answer (all False for a defense without one)."""
        if not self._has_reject:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        return self.ask("reject", x, seed=secrets.randbits(63)).bool()

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            raise AttributeError(
                f"{name!r}: this match is played with the defense apart (its code failed in the attack's process "
                "and not on its own), so the model answers forward, reject and gradients only"
            ) from None

    def ask(self, kind: str, x: torch.Tensor, grad: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """One request to the defense's host, through the arena."""
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy()
        extra = None if grad is None else grad.detach().to("cpu", torch.float32).contiguous().numpy()
        self._conn.send(wire.service(wire.MODEL, (kind, batch, extra, seed)))
        return torch.from_numpy(self._conn.recv()).to(x.device)


class ArenaTarget(Target):
    """The :class:`~arena.rules.hookspecs.Target` handed to an attack, in the attack's own process."""

    def __init__(
        self,
        threat: str,
        conn: Connection,
        model: nn.Module | None,
        substitute: nn.Module,
        num_classes: int,
        input_shape: tuple[int, ...],
        device: torch.device,
        guard: bool = True,
    ) -> None:
        if threat == "black-box" and model is not None:
            raise ValueError("a black-box target never holds the defended model")
        self.threat = threat
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.device = device
        self._conn = conn
        self._model = GuardedModel(model, conn, input_shape, num_classes) if model is not None and guard else model
        self._substitute = substitute
        self._data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._used = 0
        self._left = 0

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise ThreatModelError(
                f"{self.threat}: the defended model is not available; use target.query(x) or target.substitute"
            )
        return self._model

    @property
    def substitute(self) -> nn.Module:
        return self._substitute

    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Asked from the arena on first use (the attack's process reads no data set itself)."""
        return self._data_set(wire.TRAIN_DATA)

    @property
    def public_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Asked from the arena on first use, like :attr:`train_data`."""
        return self._data_set(wire.PUBLIC_DATA)

    def _data_set(self, service: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels the arena's ``service`` sends, asked once."""
        if service not in self._data_sets:
            self._conn.send(wire.service(service, None))
            x, y = self._conn.recv()
            self._data_sets[service] = torch.from_numpy(x), torch.from_numpy(y)
        return self._data_sets[service]

    @property
    def queries_used(self) -> int:
        return self._used

    @property
    def queries_left(self) -> int:
        return self._left

    def open_call(self, allowance: int) -> None:
        """Start an attack call with ``allowance`` images (the arena keeps its own count)."""
        self._used, self._left = 0, allowance

    def query(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"query expects a torch.Tensor, got {type(x).__name__}")
        self._conn.send(wire.service(wire.QUERY, x.detach().to("cpu", torch.float32).contiguous().numpy()))
        answer = self._conn.recv()
        if isinstance(answer, wire.QueryRefused):
            raise (QueryBudgetExceeded if answer.reason == "budget" else ValueError)(answer.text)
        self._used, self._left = answer.used, answer.left
        return torch.from_numpy(answer.probs).to(x.device)
