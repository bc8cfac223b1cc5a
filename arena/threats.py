"""What an attack sees under each threat model, and the arena's side of ``query``.

:class:`ArenaTarget` lives in the attack's process. Its ``query`` crosses a pipe to the arena's
process, where :class:`QueryServer` counts every image against the budget and passes the query on
to the secret defended model (in its own sandbox, see :mod:`arena.match`). Under black-box the
attack's process never loads the defended model at all: no attribute, garbage-collector walk or
frame inspection can reach parameters that are not there.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np
import torch
from torch import nn

from arena.hookspecs import QueryBudgetExceeded, Target, ThreatModelError
from arena.referee import quantize


class QueryServer:
    """Counts an attack's queries and passes those within budget to the secret model's ``answer``.

    A query reaches the model as the referee would judge it: clipped to [0, 1] and on the track's grid of
    ``levels`` grey levels, so a defense cannot tell an attack's probe from an image it is judged on.
    """

    def __init__(self, answer: Callable[[np.ndarray], np.ndarray], input_shape: tuple[int, ...], levels: int) -> None:
        self._answer = answer
        self._input_shape = tuple(input_shape)
        self._levels = levels
        self.allowance = 0
        self.used = 0
        self.total = 0

    def allow(self, images: int) -> None:
        """Open a new attack call that may send ``images`` images."""
        self.allowance = images
        self.used = 0

    def __call__(self, x: object) -> tuple:
        """One query, as it arrives from the pipe: ``("ok", probs, used, left)`` or ``("error", kind, text)``."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != len(self._input_shape) + 1:
            shape = ", ".join(map(str, self._input_shape))
            return ("error", "value", f"query expects a float32 batch shaped (k, {shape})")
        if tuple(x.shape[1:]) != self._input_shape or not np.isfinite(x).all():
            return ("error", "value", f"query got shape {tuple(x.shape)} or non-finite values")
        if self.used + len(x) > self.allowance:
            return ("error", "budget", f"query budget exhausted: {self.used} of {self.allowance} images used")
        probs = self._answer(quantize(torch.from_numpy(x), self._levels).numpy())
        self.used += len(x)
        self.total += len(x)
        return ("ok", probs, self.used, self.allowance - self.used)


class ArenaTarget(Target):
    """The :class:`~arena.hookspecs.Target` handed to an attack, in the attack's own process."""

    def __init__(
        self,
        threat: str,
        conn: Connection,
        model: nn.Module | None,
        substitute: nn.Module,
        num_classes: int,
        input_shape: tuple[int, ...],
        device: torch.device,
    ) -> None:
        if threat == "black-box" and model is not None:
            raise ValueError("a black-box target never holds the defended model")
        self.threat = threat
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.device = device
        self._conn = conn
        self._model = model
        self._substitute = substitute
        self._train_data: tuple[torch.Tensor, torch.Tensor] | None = None
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
        if self._train_data is None:
            self._conn.send(("train-data", None))
            x, y = self._conn.recv()
            self._train_data = torch.from_numpy(x), torch.from_numpy(y)
        return self._train_data

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
        self._conn.send(("query", x.detach().to("cpu", torch.float32).contiguous().numpy()))
        reply = self._conn.recv()
        if reply[0] == "error":
            raise (QueryBudgetExceeded if reply[1] == "budget" else ValueError)(reply[2])
        _, probs, self._used, self._left = reply
        return torch.from_numpy(probs).to(x.device)
