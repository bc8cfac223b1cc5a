"""The messages between the arena and its sandboxes, each kind named once, and each reply decoded once.

Both ends import this module. What the arena sends is trusted (the sandboxed process unpickles it whole), so a
request is a typed :class:`~typing.NamedTuple` built where the arena builds it. What a sandbox sends is untrusted:
the arena decodes it with a restricted unpickler (plain data and numpy arrays only, see
:mod:`arena.sandbox.box`), so it stays a plain tuple ``(kind, *fields)`` on the pipe, built by this module's
functions in the sandbox and checked by its ``decode_*`` functions in the arena, which raise
:class:`ProtocolError` saying what was expected.

The envelope: the arena sends a request (or :data:`STOP`); the sandbox answers ``("reply", value)`` or
``("error", text)``, and meanwhile may send one-way notices ``("notice", payload)`` and ask services
``(name, payload)`` (``query``, ``train-data``, ``defense-fault``, ``model``), each answered by the arena.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch


class ProtocolError(ValueError):
    """A sandbox sent a malformed message: what was expected, and what came."""


# --------------------------------------------------------------------------------------------------
# The envelope (arena.sandbox.box and arena.sandbox.child)
# --------------------------------------------------------------------------------------------------


class Stop(NamedTuple):
    """The arena's last message to a sandbox: end now."""


STOP = Stop()
READY = ("ready",)
SETUP_ERROR = "sandbox-error"
#: the services an attack's process may ask of the arena, and its one-way notices
QUERY, TRAIN_DATA, PUBLIC_DATA = "query", "train-data", "public-data"
DEFENSE_FAULT, MODEL, NOTICE = "defense-fault", "model", "notice"


class Message(NamedTuple):
    """A sandbox's message, opened: ``reply``, ``error``, ``notice`` or a service's name, and its payload."""

    kind: str
    payload: Any


def reply(value: Any) -> tuple:
    """The sandbox's answer to a request."""
    return ("reply", value)


def error(text: str) -> tuple:
    """The sandbox's failure (its code raised)."""
    return ("error", text)


def setup_error(text: str) -> tuple:
    """The sandbox could not be set up (the arena's failure)."""
    return (SETUP_ERROR, text)


def service(name: str, payload: Any) -> tuple:
    """A request of the sandbox's to the arena, or a one-way notice (``name`` :data:`NOTICE`)."""
    return (name, payload)


def open_message(message: object) -> Message:
    """A sandbox's message as :class:`Message`; raise :class:`ProtocolError` for anything but a pair."""
    if not (isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], str)):
        raise ProtocolError(f"protocol violation: unexpected message of type {type(message).__name__}")
    return Message(*message)


# --------------------------------------------------------------------------------------------------
# The arena's requests to an attack's process (arena.play.attackers)
# --------------------------------------------------------------------------------------------------


class StartMatch(NamedTuple):
    """Start a match: ``spec`` as the attack may see it; ``apart``, with the defense apart, what its host has
    (``{"reject": bool}``), else None."""

    spec: Any
    apart: dict[str, bool] | None


class Batch(NamedTuple):
    """Run the attack on a batch: images, labels, targets (a targeted attack's) and the query allowance."""

    x: np.ndarray
    y: np.ndarray
    targets: np.ndarray | None
    allowance: int


class NotATensor(ProtocolError):
    """The attack returned something other than a tensor on its inputs' device (its process is fine)."""


def output(value: object, x: torch.Tensor) -> tuple:
    """In the attack's process: its output for the batch ``x``, as plain data."""
    if not isinstance(value, torch.Tensor):
        return ("object", type(value).__name__)
    if value.device != x.device:
        return ("device", str(value.device), str(x.device))
    return ("tensor", value.detach().cpu().numpy())


def decode_output(answer: object) -> np.ndarray:
    """The attack's output for a batch; :class:`NotATensor` for another object, :class:`ProtocolError` for garbage."""
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "object":
        raise NotATensor(f"the attack returned {answer[1]}, not a torch.Tensor")
    if isinstance(answer, tuple) and len(answer) == 3 and answer[0] == "device":
        raise NotATensor(f"the attack returned a tensor on {answer[1]}, expected {answer[2]}")
    if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "tensor" and isinstance(answer[1], np.ndarray):
        return answer[1]
    raise ProtocolError("protocol violation: a malformed reply to a batch")


# --------------------------------------------------------------------------------------------------
# What an attack's process sends the arena: notices, reports of the defense's failures, the model's calls
# --------------------------------------------------------------------------------------------------

LEAVE = ("leave",)


class Enter(NamedTuple):
    """The defense's code starts in the attack's process: on ``images`` images, ``forward`` or ``backward``."""

    images: int
    phase: str


def enter(images: int, phase: str) -> tuple:
    """The notice that the defense's code starts (see :class:`Enter`)."""
    return ("enter", images, phase)


def decode_notice(payload: object) -> Enter | None:
    """An :class:`Enter`, or None for :data:`LEAVE`; :class:`ProtocolError` for anything else."""
    kind = payload[0] if isinstance(payload, tuple) and payload and isinstance(payload[0], str) else None
    if kind == "leave" and len(payload) == 1:
        return None
    if kind == "enter" and len(payload) == 3:
        _, images, phase = payload
        if isinstance(images, int) and isinstance(phase, str) and phase in ("forward", "backward"):
            return Enter(images, phase)
    raise ProtocolError("protocol violation: a malformed notice")


class FaultReport(NamedTuple):
    """The defense's ``method`` (forward or reject) failed on ``batch`` in the attack's process (``grad``: with
    gradients), for the reason ``problem``."""

    batch: np.ndarray
    grad: bool
    method: str
    problem: str


def decode_fault_report(payload: object) -> FaultReport:
    """A :class:`FaultReport` (its batch still to be checked as images); :class:`ProtocolError` if malformed."""
    if not (isinstance(payload, tuple) and len(payload) == 4):
        raise ProtocolError("protocol violation: a malformed report of the defense's failure")
    batch, grad, method, problem = payload
    if not isinstance(batch, np.ndarray) or method not in ("forward", "reject"):
        raise ProtocolError("protocol violation: a malformed report of the defense's failure")
    return FaultReport(batch, bool(grad), method, str(problem)[:300])


class ModelCall(NamedTuple):
    """With the defense apart, a call of the defended model: ``forward`` (logits), ``vjp`` (the input gradient of
    ``grad``, the output's) or ``reject``, from the random ``seed`` the attack's side chose. Sent on by the arena
    to the model's host as it is."""

    method: str
    batch: np.ndarray
    grad: np.ndarray | None
    seed: int


def decode_model_call(payload: object, input_shape: tuple[int, ...], num_classes: int) -> ModelCall:
    """A :class:`ModelCall` with a float32 batch shaped ``(k, *input_shape)``; :class:`ProtocolError` if malformed."""
    if not (isinstance(payload, tuple) and len(payload) == 4 and payload[0] in ("forward", "vjp", "reject")):
        raise ProtocolError("protocol violation: a malformed request for the model")
    call = ModelCall(*payload)
    batch = call.batch
    shape = (len(batch), *input_shape) if isinstance(batch, np.ndarray) and batch.ndim == len(input_shape) + 1 else None
    if shape is None or batch.shape != shape or batch.dtype != np.float32 or not isinstance(call.seed, int):
        raise ProtocolError(f"the attack asked the model about a malformed batch (expected float32 (k, {input_shape}))")
    grad, expected = call.grad, (len(batch), num_classes)
    if call.method == "vjp" and not (
        isinstance(grad, np.ndarray) and grad.shape == expected and grad.dtype == np.float32
    ):
        raise ProtocolError("the attack asked for a gradient with a malformed output gradient")
    return call


class QueryAnswer(NamedTuple):
    """The arena's answer to a query: the defense's probabilities, and the images used and left of the call."""

    probs: np.ndarray
    used: int
    left: int


class QueryRefused(NamedTuple):
    """The arena refused a query: ``budget`` (exhausted) or ``value`` (a malformed batch), and why."""

    reason: str
    text: str


# --------------------------------------------------------------------------------------------------
# The arena's requests to a defense host (arena.play.hosts), and the host's answers
# --------------------------------------------------------------------------------------------------


class Describe(NamedTuple):
    """What the hosted model has: ``{"reject": bool}``."""


class Probs(NamedTuple):
    """The model's probabilities for a query's batch (a counted query)."""

    batch: np.ndarray


class Classify(NamedTuple):
    """The referee's verdict over ``draws`` draws: predictions and rejections, each shaped ``(draws, k)``."""

    x: np.ndarray
    draws: int


class Gradient(NamedTuple):
    """The median norm of the input gradient of the loss at the model's own prediction (the diagnostics')."""

    x: np.ndarray


class Replay(NamedTuple):
    """Run the defense's ``method`` on ``batch`` as the attack's process did (``grad``: with gradients)."""

    batch: np.ndarray
    grad: bool
    method: str


def decode_described(answer: object) -> dict[str, bool]:
    """A host's answer to :class:`Describe`."""
    if not (isinstance(answer, dict) and isinstance(answer.get("reject"), bool)):
        raise ProtocolError("the defense's host described its model with garbage")
    return {"reject": answer["reject"]}


def decode_array(answer: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A finite array shaped ``shape`` (probabilities, logits, a gradient, a mask); else :class:`ProtocolError`."""
    if not isinstance(answer, np.ndarray) or answer.shape != shape or not np.isfinite(answer).all():
        raise ProtocolError(f"the defense answered {what} with garbage (expected a finite array shaped {shape})")
    return answer


def decode_verdict(answer: object, draws: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A host's answer to :class:`Classify`: predictions and rejections, each shaped ``(draws, n)``."""
    if not (isinstance(answer, tuple) and len(answer) == 2):
        raise ProtocolError("the defense returned malformed predictions")
    for name, array in zip(("predictions", "rejections"), answer, strict=True):
        if not isinstance(array, np.ndarray) or array.shape != (draws, n):
            raise ProtocolError(f"the defense returned malformed {name}")
    return answer


def decode_gradient(answer: object) -> float | None:
    """A host's answer to :class:`Gradient`: a finite float, or None (no measure) for anything else."""
    return answer if isinstance(answer, float) and np.isfinite(answer) else None
