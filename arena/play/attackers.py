"""An attack's side of a match: its process (warm where it may be), what it is handed, and its batches.

:func:`play_attack` runs the attack on the evaluation set's batches in its sandbox, answering its requests:
queries (counted, passed on to a defense host), the public training split, reports of the defense's
failures in its process (replayed by the arena), and, when the match is played with the defense apart, the
model's forward and backward passes (asked of a host of their own). A :class:`arena.play.watch.DefenseWatch`
keeps the time: what the defense's code (or the arena for the attack) spends is not charged to the attack.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play import hosts
from arena.play.hosts import DefenseFault, Timings
from arena.play.matchspec import MatchSpec, attack_view, host_of
from arena.play.threats import ArenaTarget, QueryServer, RemoteModel, image_problem, notify
from arena.play.training import load_model, pick_device
from arena.play.watch import DefenseWatch, InferenceBudget
from arena.rules import physical, referee
from arena.rules.evaluation import EvalSet
from arena.rules.hookspecs import Attack, Budget
from arena.rules.tracks import Track
from arena.sandbox import Limits, PluginFailure, Sandbox, wire

#: warm attack processes a worker keeps, and matches each serves before it is started afresh (see AttackPool)
WARM_PROCESSES = 3
WARM_MATCHES = 32
#: the images one call of the defense's code may hold, counted for its budget, as a multiple of the track's batch
MOST_IMAGES_PER_BATCH = 10
#: the defense's (and the arena's) time not charged to an attack, in multiples of the track's time limit: in the
#: attack's process (where the attack could forge the notices), and with the defense apart (timed by the arena)
EXCUSED, EXCUSED_APART = 3.0, 20.0


@dataclass
class Attacked:
    """What the attack returned for the whole evaluation set, checked, and what it cost."""

    outputs: torch.Tensor
    log_tail: str
    queries: int
    seconds: float


class Suspect(Exception):
    """The attack's process failed or was stopped while the defense's code ran in it, or the defense's code
    failed there and the arena could not reproduce it on its own: whose fault it is, the match played again
    with the defense apart tells (:func:`arena.play.match.play`)."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.log_tail = reason, log_tail


@dataclass(frozen=True)
class AttackProcess:
    """What an attack's process starts with: the attack, the track and the substitute (no defense)."""

    attack: PluginSource
    track: Track
    threat: str
    substitute_artifact: bytes
    cache_dir: Path

    @classmethod
    def of(cls, spec: MatchSpec) -> AttackProcess:
        """The process that plays ``spec``'s attack."""
        return cls(spec.attack, spec.track, spec.threat, spec.substitute_artifact, spec.cache_dir)

    def key(self) -> tuple[str, str, str, bytes]:
        """Matches with the same key may share a process: same attack version, track and threat."""
        track = json.dumps(self.track.config(), sort_keys=True)
        return self.attack.content_hash, track, self.threat, hashlib.sha256(self.substitute_artifact).digest()


class AttackPool:
    """Warm attack processes, one per attack version, track and threat, reused from match to match.

    A process never serves another threat (or track, or attack version) than it started with, and
    each match in it starts afresh (:func:`_attack_setup`); it serves at most ``matches`` matches
    (its CPU limit covers that many), and one that failed is discarded. At most ``size`` are kept,
    the least recently used closed first. One match at a time: a worker plays its jobs in turn.
    """

    def __init__(self, size: int = WARM_PROCESSES, matches: int = WARM_MATCHES) -> None:
        self.size, self.matches = size, matches
        self._boxes: OrderedDict[tuple, tuple[Sandbox, int]] = OrderedDict()

    def acquire(self, spec: MatchSpec, scope: Hashable = None) -> Sandbox:
        """A started process for ``spec``'s attack in ``scope`` (a round: see :func:`play`), warm if one is
        kept, counted as one more match."""
        process = AttackProcess.of(spec)
        key = (scope, *process.key())
        box, served = self._boxes.pop(key, (None, 0))
        if box is not None and served >= self.matches:
            box.close_soon()
            box = None
        if box is None:
            while len(self._boxes) >= self.size:
                self._boxes.popitem(last=False)[1][0].close_soon()
            limits = Limits.from_env()
            box = Sandbox(
                _attack_setup,
                (process,),
                time_limit=spec.track.time_limit,
                label=spec.attack.label,
                writable=(spec.cache_dir,),
                limits=replace(limits, cpu=limits.cpu * self.matches),
            )
            box.__enter__()
            served = 0
        self._boxes[key] = (box, served + 1)
        return box

    def discard(self, spec: MatchSpec, scope: Hashable = None) -> None:
        """Close the process of ``spec``'s attack in ``scope``."""
        box, _ = self._boxes.pop((scope, *AttackProcess.of(spec).key()), (None, 0))
        if box is not None:
            box.close()

    def close(self) -> None:
        """Close every process."""
        while self._boxes:
            self._boxes.popitem()[1][0].close()

    def __enter__(self) -> AttackPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# over 60 lines: one loop of batches and the ways it ends (whose failure), read best in one place
def play_attack(
    spec: MatchSpec,
    evaluation: EvalSet,
    timings: Timings,
    pool: AttackPool | None = None,
    scope: Hashable = None,
    apart: bool = False,
) -> Attacked:
    """Run ``spec``'s attack on every batch of ``evaluation``; raise :class:`PluginFailure` (the attack's
    failure, a malformed output included), :class:`DefenseFault` (the defense's) or :class:`Suspect`.

    The attack plays in a warm process of ``pool`` that serves only matches of the same ``scope`` (the round),
    else in a fresh one. ``apart``: the defended model (the twin under gray-box) runs in a host of its own, and
    the attack holds a :class:`arena.play.threats.RemoteModel` (a fresh process, never a warm one). ``timings``
    say where the defense's hosts run (:func:`arena.play.hosts.device_for`).

    One function of about 80 lines, on purpose: one ``ExitStack`` holds the hosts, the services and the attack's
    process through the batches, and the blame of a failure reads all of them in the order they were opened.
    """
    track, started = spec.track, time.perf_counter()
    x, y, targets = evaluation.x, evaluation.y, evaluation.targets
    faults: list[str] = []  # the defense's failures in the attack's process, reproduced by the arena
    unreproduced: list[str] = []
    excused = track.time_limit * (EXCUSED_APART if apart else EXCUSED)
    watch = DefenseWatch(InferenceBudget(track.inference_seconds), excused, track.batch_size * MOST_IMAGES_PER_BATCH)

    with contextlib.ExitStack() as stack:
        queries = stack.enter_context(hosts.LazyHost(host_of(spec, timings)))
        server = QueryServer(
            _excused(watch, queries.probs), track.input_shape, track.levels, _query_look(track, evaluation)
        )
        train_split = functools.cache(lambda: _train_split(spec))  # made once per match, if asked for
        attacked_host = host_of(spec, timings, spec.attacked_artifact)
        public_split = functools.cache(lambda: _public_split(spec))
        services = {
            wire.QUERY: server,
            wire.TRAIN_DATA: lambda _: train_split(),
            wire.PUBLIC_DATA: lambda _: public_split(),
            wire.DEFENSE_FAULT: lambda report: _confirm(attacked_host, spec, report, faults, unreproduced),
        }
        remote = None
        if apart:  # no defense code runs in the attack's process: a report of its failure there is forged
            services[wire.DEFENSE_FAULT] = lambda _report: False
            model = stack.enter_context(hosts.LazyHost(attacked_host))
            services[wire.MODEL] = _excused(
                watch, lambda request: hosts.answer_apart(model, request, track.input_shape)
            )
            remote = hosts.describe(model.box)
        attacks = pool if pool is not None and not apart else stack.enter_context(AttackPool(size=1, matches=1))
        box = attacks.acquire(spec, scope)
        mark = box.log_mark()
        box.renew()
        outputs: list[torch.Tensor] = []
        try:
            box.call(wire.StartMatch(attack_view(spec), remote), services=services, watch=watch)
            for start in range(0, len(x), track.batch_size):
                stop = start + track.batch_size
                server.allow(len(x[start:stop]) * track.max_queries)
                aimed = targets[start:stop].numpy() if spec.targeted else None
                request = wire.Batch(x[start:stop].numpy(), y[start:stop].numpy(), aimed, server.allowance)
                output = _decode(box.call(request, services=services, watch=watch))
                outputs.append(referee.check_output(output, x[start:stop]))
        except PluginFailure as exc:
            attacks.discard(spec, scope)  # its process may be dead or in any state: the next starts afresh
            if faults:  # the attack failed after the defense's code did: the defense's failure comes first
                raise DefenseFault(faults[0], exc.log_tail) from None
            why = None if apart else _suspicion(watch, unreproduced, exc.reason)
            if why is not None:
                raise Suspect(why, exc.log_tail) from None
            raise
        except referee.MalformedOutput as exc:  # the process is fine and may serve the next match
            raise PluginFailure(str(exc), box.log_since(mark)) from None
        except BaseException:
            attacks.discard(spec, scope)  # stopped mid-call (the defense failed answering it): never reused
            raise
        finally:
            log_tail = box.log_since(mark)
    if faults:
        raise DefenseFault(faults[0], log_tail)
    if unreproduced:
        raise Suspect(unreproduced[0], log_tail)
    return Attacked(torch.cat(outputs), log_tail, server.total, time.perf_counter() - started)


def _suspicion(watch: DefenseWatch, unreproduced: list[str], failure: str) -> str | None:
    """Why the attack's failure may be the defense's doing (then the match is played again apart), or None."""
    if unreproduced:
        return unreproduced[0]
    if watch.overran:
        return watch.overran
    if watch.inside:
        return f"the attack's process failed while the defense's code ran in it ({failure})"
    if watch.exhausted:
        return f"the attack's time ran out after the defense's code had taken {watch.excused():.0f} s ({failure})"
    return None


def _excused(watch: DefenseWatch, service: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``service``, its time not charged to the attack (the arena's and the defense's, not the attack's)."""

    def timed(payload: Any) -> Any:
        started = time.monotonic()
        try:
            return service(payload)
        finally:
            watch.excuse(time.monotonic() - started)

    return timed


def _query_look(track: Track, evaluation: EvalSet) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How a query reaches the defense on a physical track: photographed under a fresh secret draw per query."""
    if track.transform == "none":
        return None
    count = itertools.count()

    def look(x: torch.Tensor) -> torch.Tensor:
        seed = int(np.random.SeedSequence([evaluation.photo_seed, next(count)]).generate_state(1)[0]) & 0x7FFFFFFF
        return physical.photograph(x, seed, track.photo_ranges, track.levels)

    return look


def _confirm(host: hosts.Host, spec: MatchSpec, report: object, faults: list[str], unreproduced: list[str]) -> bool:
    """Replay a failure the attack's process reports (:class:`arena.play.threats.GuardedModel`) in a fresh ``host``.

    Only a failure that happens again there, without the attack's code, is the defense's (``faults``); one
    that does not (``unreproduced``) has the match played again with the defense apart.
    """
    try:
        batch, grad, method, problem = wire.decode_fault_report(report)
    except wire.ProtocolError:
        return False
    if image_problem(batch, spec.track.input_shape):
        return False
    reason = hosts.replay(host, batch, grad, method)
    said = f"its {method} failed on a valid batch in the attack's process ({problem})"
    if reason is not None:
        faults.append(f"{said} and again when the arena replayed the batch ({reason})")
    else:
        unreproduced.append(f"{said}, but not when the arena replayed the batch without the attack's code")
    return reason is not None


def _train_split(spec: MatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """The track's public training split, for an attack that asks (``target.train_data``)."""
    x, y = spec.track.train_set(spec.data_dir)
    return x.numpy(), y.numpy()


def _public_split(spec: MatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """The track's public held-out split, the originals of its evaluation images (``target.public_data``)."""
    data = spec.track.load(spec.data_dir)
    return data.x_test, data.y_test


def _decode(answer: object) -> torch.Tensor:
    """Rebuild the tensor the attack returned; another object is a malformed output (its process is fine), a
    malformed reply a protocol violation (its process is discarded)."""
    try:
        return torch.from_numpy(wire.decode_output(answer))
    except wire.NotATensor as exc:
        raise referee.MalformedOutput(str(exc)) from None
    except wire.ProtocolError as exc:
        raise PluginFailure(str(exc)) from None


def _attack_setup(conn: Connection, process: AttackProcess):  # noqa: ANN202 (a sandbox handler)
    """An attack's process: its plugin and the substitute loaded once, then one match after another.

    :class:`arena.sandbox.wire.StartMatch` starts a match (its spec is :func:`attack_view`'s: only what its threat
    allows): a fresh instance of the attack, the model its threat hands over (with ``apart``, the defense's
    answers from its own host: :class:`RemoteModel`), seeds from the match's seed; the previous match's model
    and target are dropped. :class:`arena.sandbox.wire.Batch` runs the attack on a batch.
    """
    device = pick_device()
    track = process.track
    plugin = plugins.load(process.attack, process.cache_dir)
    substitute = load_model(process.substitute_artifact, device, None, process.cache_dir)
    match: dict[str, Any] = {}

    def start(spec: MatchSpec, apart: dict[str, bool] | None) -> tuple:
        match.clear()
        model: torch.nn.Module | None = None
        if spec.threat != "black-box" and apart is not None:
            model = RemoteModel(conn, track.input_shape, apart["reject"], device)
        elif spec.threat != "black-box":  # loading runs the defense's code (its module): the arena is told
            notify(conn, wire.enter(0, "forward"))
            model = load_model(spec.attacked_artifact, device, spec.defense, spec.cache_dir)
            notify(conn, wire.LEAVE)
        torch.manual_seed(spec.seed)
        match["attack"] = plugin.instantiate()
        assert isinstance(match["attack"], Attack)
        match["target"] = ArenaTarget(
            spec.threat, conn, model, substitute, track.num_classes, track.input_shape, device, guard=apart is None
        )
        match["generator"] = torch.Generator(device=device).manual_seed(spec.seed)
        return ("started",)

    def handle(request: wire.StartMatch | wire.Batch) -> tuple:
        if isinstance(request, wire.StartMatch):
            return start(request.spec, request.apart)
        x, y, targets, allowance = request
        target = match["target"]
        target.open_call(allowance)
        budget = Budget(
            norm=track.norm,
            eps=track.eps,
            levels=track.levels,
            max_queries=track.max_queries,
            generator=match["generator"],
            targets=None if targets is None else torch.from_numpy(targets).to(device),
            photo=track.photo_ranges if track.transform != "none" else None,
        )
        x = torch.from_numpy(x).to(device)
        return wire.output(match["attack"].run(target, x, torch.from_numpy(y).to(device), budget), x)

    return handle
