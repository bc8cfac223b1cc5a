"""Defense hosts: sandboxes where only the defense's code runs, answering for the defended model.

A host loads one trained model (the defended model or its twin) and answers ``probs`` (a counted query),
``classify`` (the referee's verdict over draws), ``gradient`` (the diagnostics' measure), ``replay``
(a batch on which the defense's code failed in an attack's process, run again without the attack's
code) and, for a match played with the defense apart, ``forward``, ``vjp`` and ``reject`` (the model as
:class:`arena.play.threats.RemoteModel` asks for it). It never sees a label. Since no attack code runs in a
host, whatever fails there is the defense's own failure (:class:`DefenseFault`): the match counts against
the defense. So does an answer that takes longer than the defense's inference budget for its images
(:class:`arena.play.watch.InferenceBudget`).

Where there is a GPU, a model's hosts run where they answer sooner (:func:`device_for`): each fresh host on the GPU
makes a CUDA context of its own (0.4 s before its first answer on an H200), which costs more than the whole
classification of a small model on the CPU, and less than that of a heavy one (Defense-GAN's search).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from arena.contract.plugins import PluginSource
from arena.play.lru import LRU
from arena.play.threats import image_problem, output_problem
from arena.play.training import load_model
from arena.play.watch import BACKWARD_FACTOR, InferenceBudget
from arena.rules import referee
from arena.sandbox import PluginFailure, Sandbox, wire

#: what a fresh host on the GPU pays before its first answer: 0.25 s to make its CUDA context and about
#: 0.2 s more for the model's copy and the first cuDNN and cuBLAS calls (an H200, docs/architecture.md)
CUDA_START_SECONDS = 0.4
#: what a host is asked (:mod:`arena.sandbox.wire`)
HostRequest = wire.Describe | wire.Probs | wire.Classify | wire.Gradient | wire.Replay | wire.ModelCall
#: how many models' CPU timings a worker keeps (:class:`arena.play.warm.Warm`)
MAX_TIMED_MODELS = 1024
#: per trained model (the sha256 of its artifact): how long it took to classify on the CPU (see :func:`probe`)
Timings = LRU[bytes, float]


@functools.lru_cache(maxsize=32)
def _digest(artifact: bytes) -> bytes:
    """The model's key in its :data:`Timings`: hashed once, though every host of every match asks for it."""
    return hashlib.sha256(artifact).digest()


def device_for(artifact: bytes, timings: Timings) -> str:
    """Where every host of this trained model runs: the CPU, unless there is a GPU and the model's
    classification on the CPU (:func:`probe`, kept in ``timings``) took longer than a host's CUDA start."""
    if not torch.cuda.is_available():
        return "cpu"
    seconds = timings.get(_digest(artifact))
    return "cuda" if seconds is not None and seconds > CUDA_START_SECONDS else "cpu"


def timed(timings: Timings, artifact: bytes, seconds: float) -> None:
    """Remember in ``timings`` how long a model took to classify on the CPU (its first time only)."""
    timings.setdefault(_digest(artifact), seconds)


def probe(host: Host, x: torch.Tensor, timings: Timings) -> None:
    """On a GPU worker, before a model's first match here: time its classification of ``x`` on the CPU, in a
    throwaway host whose answer is discarded. Every host of the model then runs on the device this decides,
    the clean, the adversarial and the query host alike: none can tell which it is by its device (had the
    first real host been timed instead, a defense slow on purpose would have known its clean host by its CPU)."""
    if not torch.cuda.is_available() or _digest(host.artifact) in timings:
        return
    seconds = 0.0  # a model that fails here stays on the CPU, where its real hosts report the failure
    with contextlib.suppress(PluginFailure), replace(host, device="cpu").sandbox() as box:
        started = time.perf_counter()
        box.call(wire.Classify(x.numpy(), 1))
        seconds = time.perf_counter() - started
    timed(timings, host.artifact, seconds)


class DefenseFault(Exception):
    """The defense's own code failed on valid images: in its host, or in the attack's process and again
    when the arena replayed it. The match counts against the defense (none of its samples survived)."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail


@dataclass(frozen=True)
class Host:
    """What a host needs: the defense's code, one of its trained models, where to unpack the code, and the
    device it runs on (see :func:`device_for`)."""

    defense: PluginSource
    artifact: bytes
    num_classes: int
    cache_dir: Path
    time_limit: float
    device: str
    budget: InferenceBudget

    def sandbox(self) -> Sandbox:
        """A fresh host (use it as a context manager)."""
        return Sandbox(_setup, (self,), self.time_limit, self.defense.label, writable=(self.cache_dir,))


class LazyHost:
    """A host started on the first request (most attacks make none), closed with the block."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._stack = contextlib.ExitStack()
        self._box: Sandbox | None = None

    @property
    def box(self) -> Sandbox:
        """The started host."""
        if self._box is None:
            self._box = self._stack.enter_context(self.host.sandbox())
        return self._box

    def probs(self, batch: np.ndarray) -> np.ndarray:
        """The defense's probabilities for a query (see :func:`probs`)."""
        return probs(self.box, batch, self.host.num_classes, self.host.budget)

    def __enter__(self) -> LazyHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


def call(host: Sandbox, request: HostRequest, budget: InferenceBudget | None = None, images: int = 0) -> Any:
    """A request to a host: its failure, or an answer past ``budget`` for ``images`` images, is the defense's
    (:class:`DefenseFault`)."""
    timeout = budget.seconds(images) if budget is not None else None
    try:
        return host.call(request, timeout=timeout)
    except PluginFailure as exc:
        if budget is not None and "time-out: no answer within" in exc.reason:
            raise DefenseFault(f"{host.label}: {budget.overrun(timeout or 0.0, images)}", exc.log_tail) from None
        raise DefenseFault(exc.reason, exc.log_tail) from None


def probs(host: Sandbox, batch: np.ndarray, num_classes: int, budget: InferenceBudget) -> np.ndarray:
    """The defense's probabilities for a query, checked before the attack sees them."""
    answer = call(host, wire.Probs(batch), budget, len(batch))
    return _decoded(host.label, wire.decode_array, answer, (len(batch), num_classes), "a query")


def describe(host: Sandbox) -> dict[str, bool]:
    """What the hosted model has (:class:`arena.sandbox.wire.Describe`)."""
    return _decoded(host.label, wire.decode_described, call(host, wire.Describe()))


def _decoded(label: str, decode: Callable[..., Any], answer: object, *args: Any) -> Any:
    """``decode(answer, *args)``: a malformed answer of a host is the defense's failure (:class:`DefenseFault`)."""
    try:
        return decode(answer, *args)
    except wire.ProtocolError as exc:
        raise DefenseFault(f"{label}: {exc}") from None


def answer_apart(host: LazyHost, request: object, input_shape: tuple[int, ...]) -> np.ndarray:
    """The defended model's answer to a :class:`arena.play.threats.RemoteModel` request (a match played with the
    defense apart), checked. A malformed request, or images outside [0, 1] that the defense failed on, are the
    attack's failure (``ValueError``); a failure on valid images, a late or a malformed answer the defense's
    (:class:`DefenseFault`)."""
    model_call = wire.decode_model_call(request, input_shape, host.host.num_classes)
    kind, batch = model_call.method, model_call.batch
    n, classes = len(batch), host.host.num_classes
    budget = InferenceBudget(host.host.budget.per_image * (BACKWARD_FACTOR if kind == "vjp" else 1.0))
    try:
        answer = call(host.box, model_call, budget, n)
    except DefenseFault:
        if image_problem(batch, input_shape) is not None:
            raise ValueError(f"the defense's {kind} failed on images outside [0, 1] that the attack gave it") from None
        raise
    expected = {"forward": (n, classes), "vjp": batch.shape, "reject": (n,)}[kind]
    return _decoded(host.host.defense.label, wire.decode_array, answer, expected, f"its {kind} in its own host")


def classify(host: Host, x: torch.Tensor, draws: int, probe: bool = False) -> tuple[referee.Verdict, dict]:
    """Classify ``x`` in a fresh host; check what it answers.

    The host starts now, when ``x`` is ready, and is closed in the background once it has answered. Clean
    and adversarial inputs thus reach hosts that have waited for nothing: a host started early (while the
    attack plays) would idle until the adversarial inputs came, and a defense could tell them by that wait
    (``tests/cheats/idle-detector``).

    With ``probe`` (clean inputs of a white-box match) the host also measures the median norm of the
    input gradient of the loss at its own prediction, for the board's diagnostics; a defense that fails
    there is not blamed for it (the measure is the arena's, not part of the game). Randomized defenses
    (``draws > 1``) also report how often their draws disagree.
    """
    box = host.sandbox()
    box.__enter__()
    try:
        return _classify_in(box, host, x, draws, probe)
    finally:
        box.close_soon()


def _classify_in(box: Sandbox, host: Host, x: torch.Tensor, draws: int, probe: bool) -> tuple[referee.Verdict, dict]:
    """Classify ``x`` in the started host ``box`` and check the answer (see :func:`classify`)."""
    measured: dict[str, float] = {}
    answer = call(box, wire.Classify(x.numpy(), draws), host.budget, len(x) * draws)
    if probe:
        with contextlib.suppress(PluginFailure):  # no measure then: the board shows no diagnosis
            norm = box.call(wire.Gradient(x.numpy()), timeout=host.budget.seconds(len(x), BACKWARD_FACTOR))
            if wire.decode_gradient(norm) is not None:
                measured["input_gradient"] = norm
    preds, rejected = _decoded(host.defense.label, wire.decode_verdict, answer, draws, len(x))
    if draws > 1:
        measured["clean_disagreement"] = float((preds != preds[:1]).any(axis=0).mean())
    return referee.Verdict(torch.from_numpy(preds).long(), torch.from_numpy(rejected).bool()), measured


def replay(host: Host, batch: np.ndarray, grad: bool, method: str) -> str | None:
    """Run the defense's ``method`` (forward or reject) on ``batch`` in a fresh host; why it failed, or None."""
    try:
        with host.sandbox() as box:
            box.call(wire.Replay(batch, grad, method))
    except PluginFailure as exc:
        return exc.reason
    return None


def _setup(_conn: Connection, host: Host):  # noqa: ANN202 (a sandbox handler)
    device = torch.device(host.device)
    model = load_model(host.artifact, device, host.defense, host.cache_dir)

    def handle(request: HostRequest) -> Any:
        if isinstance(request, wire.Describe):
            return {"reject": callable(getattr(model, "reject", None))}
        if isinstance(request, wire.ModelCall):
            return _apart(model, request.method, torch.from_numpy(request.batch).to(device), request.grad, request.seed)
        x = torch.from_numpy(request[0]).to(device)
        if isinstance(request, wire.Replay):  # as the attack's process called it, gradients included
            if request.method == "reject" and not callable(getattr(model, "reject", None)):
                return True  # nothing to fail: the report was no defense's failure
            with torch.set_grad_enabled(request.grad):
                output = (model if request.method == "forward" else model.reject)(x.requires_grad_(request.grad))
            problem = output_problem(request.method, output, len(x), host.num_classes)
            if problem is not None:
                raise ValueError(problem)
            return True
        if isinstance(request, wire.Gradient):  # the input gradient of the loss at the model's own prediction
            x.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x)
                loss = F.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
            return float(grad.flatten(1).norm(dim=1).median())
        with torch.no_grad():
            if isinstance(request, wire.Probs):
                return torch.softmax(model(x).float(), dim=1).cpu().numpy()
            verdict = referee.classify(model, x, request.draws)
        return verdict.preds.cpu().numpy(), verdict.rejected.cpu().numpy()

    return handle


def _apart(model: torch.nn.Module, kind: str, x: torch.Tensor, grad: np.ndarray | None, seed: int) -> np.ndarray:
    """What :class:`arena.play.threats.RemoteModel` asks: the logits, the gradient of ``grad`` (the output's) with
    respect to ``x``, or the detector's mask; each from the random seed the attack's side chose, so that a
    randomized defense's backward pass follows its forward pass."""
    torch.manual_seed(seed)
    if kind == "reject":
        with torch.no_grad():
            return model.reject(x).bool().cpu().numpy()
    if kind == "forward":
        with torch.no_grad():
            return model(x).float().cpu().numpy()
    x.requires_grad_(True)
    with torch.enable_grad():
        output = model(x)
        (found,) = torch.autograd.grad(output, x, torch.from_numpy(grad).to(output), allow_unused=True)
    return (torch.zeros_like(x) if found is None else found).float().cpu().numpy()
