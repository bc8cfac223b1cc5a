"""One match end to end: the attack and the defense each play in a sandbox; the referee judges.

No plugin code runs in the arena's process. The defended model lives in a *defense host*
(:mod:`arena.hosts`: a sandbox that loads it and answers for it, never seeing a label); the attack lives
in its own sandbox and gets what its threat model allows (:mod:`arena.threats`): under white-box the
defended model, under gray-box the twin, under black-box nothing of the defense at all. Queries cross
from the attack to the arena, which counts them, and on to the defense host. Clean and adversarial
inputs are classified by two fresh hosts, so a defense cannot remember one to answer the other.

The images come from the track's evaluation set (:mod:`arena.evaluation`, built by the planner from the
arena's secret); no sandbox reads a data set: the attack asks the arena for the training split when it
uses ``target.train_data``. What the defense sees, an adversarial input or a query, lies on the track's
pixel grid (:func:`arena.referee.quantize_within`).
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
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena import hosts, physical, plugins, referee
from arena.evaluation import EvalSet
from arena.hookspecs import Attack, Budget
from arena.hosts import DefenseFault, Host
from arena.plugins import PluginSource
from arena.records import pack
from arena.sandbox import Limits, PluginFailure, Sandbox
from arena.threats import ArenaTarget, QueryServer, image_problem
from arena.tracks import Track
from arena.training import load_model, pick_device

WITHHELD = PluginSource(origin="withheld", files={})
#: warm attack processes a worker keeps, and matches each serves before it is started afresh (see AttackPool)
WARM_PROCESSES = 3
WARM_MATCHES = 32
#: clean verdicts of deterministic defenses, by (model, evaluation set, draws) digests: see :func:`_clean_verdict`
CLEAN_VERDICTS: dict[tuple[bytes, bytes, int], tuple[referee.Verdict, dict]] = {}
MAX_CLEAN_VERDICTS = 256


@dataclass(frozen=True)
class MatchSpec:
    """Everything one match needs; no database, so any executor can run it."""

    attack: PluginSource
    defense: PluginSource
    track: Track
    threat: str
    seed: int
    defense_artifact: bytes
    twin_artifact: bytes | None
    substitute_artifact: bytes
    evaluation: bytes
    data_dir: Path
    cache_dir: Path
    targeted: bool = False
    randomized: bool = False


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


@dataclass
class MatchOutcome:
    """What the referee decided: ``ok`` with metrics and records, or ``failed`` with the reason."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: bytes | None = None
    gallery: bytes | None = None
    error: str | None = None
    log_tail: str = ""
    wall_time: float = 0.0


def play(spec: MatchSpec, pool: AttackPool | None = None, scope: Hashable = None) -> MatchOutcome:
    """Play one match; a plugin's failure fails only this match, with its reason and log tail.

    The attack plays in a warm process of ``pool`` (see :class:`AttackPool`) that serves only matches of
    the same ``scope`` (the round: what an attack learned in one round never reaches the next, where a
    new version of a defense it queried may play), else in a fresh one.
    """
    started = time.perf_counter()
    track = spec.track
    evaluation = EvalSet.unpack(spec.evaluation)
    x, y, index, targets = evaluation.x, evaluation.y, evaluation.index, evaluation.targets
    draws = track.draws if spec.randomized else 1
    outputs: list[torch.Tensor] = []
    log_tail = ""
    faults: list[str] = []  # failures of the defense's code in the attack's process, reproduced by the arena
    try:
        hosts.probe(_host(spec), x)  # on a GPU worker, where this model's hosts run: decided before any answers
        with hosts.LazyHost(_host(spec)) as host:
            server = QueryServer(host.probs, track.input_shape, track.levels, _query_look(track, evaluation))
            train_split = functools.cache(lambda: _train_split(spec))  # made once per match, if asked for
            services = {
                "query": server,
                "train-data": lambda _: train_split(),
                "defense-fault": lambda report: _confirm(spec, report, faults),
            }
            own = contextlib.ExitStack() if pool is None else contextlib.nullcontext()
            with own as stack:
                attacks = pool if stack is None else stack.enter_context(AttackPool(size=1, matches=1))
                box = attacks.acquire(spec, scope)
                mark = box.log_mark()
                box.renew()
                try:
                    box.call(("match", attack_view(spec)))
                    for start in range(0, len(x), track.batch_size):
                        stop = start + track.batch_size
                        server.allow(len(x[start:stop]) * track.max_queries)
                        request = ("batch", x[start:stop].numpy(), y[start:stop].numpy())
                        request += (targets[start:stop].numpy() if spec.targeted else None, server.allowance)
                        output = _decode(box.call(request, services=services))
                        outputs.append(referee.check_output(output, x[start:stop]))
                except PluginFailure:
                    attacks.discard(spec, scope)  # its process may be dead or in any state: the next starts afresh
                    raise
                finally:
                    log_tail = box.log_since(mark)
        if faults:
            raise DefenseFault(faults[0])
        attack_seconds = time.perf_counter() - started
        x_adv, moved = referee.project(torch.cat(outputs), x, track.norm, track.eps)
        x_adv = referee.quantize_within(x_adv, x, track.levels, track.norm, track.eps)
        seen, seen_adv = _photographed(track, evaluation, x), _photographed(track, evaluation, x_adv)
        clean, measured = _clean_verdict(spec, seen, draws)
        adv, _ = hosts.classify(_host(spec), seen_adv, draws)
    except DefenseFault as exc:
        return _forfeit(exc, log_tail, time.perf_counter() - started)
    except (PluginFailure, referee.MalformedOutput) as exc:
        log = exc.log_tail if isinstance(exc, PluginFailure) else log_tail
        if faults:  # the attack failed after the defense's code did: the defense's failure comes first
            return _forfeit(DefenseFault(faults[0]), log, time.perf_counter() - started)
        return MatchOutcome("failed", error=str(exc), log_tail=log, wall_time=time.perf_counter() - started)
    records = referee.judge(x, y, x_adv, moved, clean, adv, targets if spec.targeted else None)
    metrics = referee.metrics(records, spec.targeted, server.total, attack_seconds, draws) | measured
    return MatchOutcome(
        "ok",
        metrics=metrics | {"norm": track.norm, "eps": track.eps, "targeted": spec.targeted},
        samples=pack(records | {"index": index.numpy()}),
        gallery=pack(referee.gallery(seen, seen_adv, records)),  # what the defense saw
        log_tail=log_tail,
        wall_time=time.perf_counter() - started,
    )


def _photographed(track: Track, evaluation: EvalSet, images: torch.Tensor) -> torch.Tensor:
    """The images as the defense sees them: as they are, or printed and photographed on a physical track
    (image ``i`` under the evaluation set's secret draw ``i``, clean and adversarial alike)."""
    if track.transform == "none":
        return images
    return physical.photograph(images, evaluation.photo_seed, track.photo_ranges, track.levels)


def _query_look(track: Track, evaluation: EvalSet) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How a query reaches the defense on a physical track: photographed under a fresh secret draw per query."""
    if track.transform == "none":
        return None
    count = itertools.count()

    def look(x: torch.Tensor) -> torch.Tensor:
        seed = int(np.random.SeedSequence([evaluation.photo_seed, next(count)]).generate_state(1)[0]) & 0x7FFFFFFF
        return physical.photograph(x, seed, track.photo_ranges, track.levels)

    return look


def _clean_verdict(spec: MatchSpec, x: torch.Tensor, draws: int) -> tuple[referee.Verdict, dict]:
    """The defense's verdict on the clean images (in a fresh host), and the board's measures of it.

    A deterministic defense answers the same images the same way in every match: its verdict is computed
    once per trained model and evaluation set in this process (:data:`CLEAN_VERDICTS`), its input gradient
    measured then too (shown for white-box matches only). A randomized defense gets fresh draws per match.
    """
    probe = spec.threat == "white-box"
    if spec.randomized:
        return hosts.classify(_host(spec), x, draws, probe=probe)
    key = (hashlib.sha256(spec.defense_artifact).digest(), hashlib.sha256(spec.evaluation).digest(), draws)
    if key not in CLEAN_VERDICTS:
        while len(CLEAN_VERDICTS) >= MAX_CLEAN_VERDICTS:
            CLEAN_VERDICTS.pop(next(iter(CLEAN_VERDICTS)))
        CLEAN_VERDICTS[key] = hosts.classify(_host(spec), x, draws, probe=True)
    verdict, measured = CLEAN_VERDICTS[key]
    return verdict, dict(measured) if probe else {k: v for k, v in measured.items() if k != "input_gradient"}


def _forfeit(fault: DefenseFault, log_tail: str, seconds: float) -> MatchOutcome:
    """The outcome of a match the defense lost by failing: not the attack's failure (``blame``)."""
    error = f"the defense failed, so the match counts against it: {fault.reason}"
    return MatchOutcome(
        "failed", {"blame": "defense"}, error=error, log_tail=fault.log_tail or log_tail, wall_time=seconds
    )


def _confirm(spec: MatchSpec, report: object, faults: list[str]) -> bool:
    """Replay a failure the attack's process reports (:class:`arena.threats.GuardedModel`) in a fresh host.

    Only a failure that happens again there, without the attack's code, is the defense's.
    """
    if not isinstance(report, tuple) or len(report) != 4:
        return False
    batch, grad, method, problem = report
    if image_problem(batch, spec.track.input_shape) or method not in ("forward", "reject"):
        return False
    artifact = spec.twin_artifact if spec.threat == "gray-box" and spec.twin_artifact else spec.defense_artifact
    reason = hosts.replay(_host(spec, artifact), batch, bool(grad), method)
    if reason is not None:
        faults.append(
            f"its {method} failed on a valid batch in the attack's process ({str(problem)[:300]}) and again "
            f"when the arena replayed the batch ({reason})"
        )
    return reason is not None


def _host(spec: MatchSpec, artifact: bytes | None = None) -> Host:
    """The host of the defended model (or of ``artifact``, the twin)."""
    model = spec.defense_artifact if artifact is None else artifact
    track = spec.track
    return Host(spec.defense, model, track.num_classes, spec.cache_dir, track.time_limit, hosts.device_for(model))


def _train_split(spec: MatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """The track's public training split, for an attack that asks (``target.train_data``)."""
    x, y = spec.track.train_set(spec.data_dir)
    return x.numpy(), y.numpy()


def attack_view(spec: MatchSpec) -> MatchSpec:
    """The spec as the attack's process may see it: only the model its threat hands over.

    The attack's process receives this spec whole, so whatever it holds, the attack can reach
    (through its frames or the garbage collector): under gray-box the defended model's artifact is
    withheld, under black-box the defense's artifacts and its code are (the substitute stays). The
    evaluation set is never there: the attack receives its batches one call at a time.
    """
    spec = replace(spec, evaluation=b"")
    if spec.threat == "white-box":
        return replace(spec, twin_artifact=None)
    if spec.threat == "gray-box":
        return replace(spec, defense_artifact=b"")
    return replace(spec, defense=WITHHELD, defense_artifact=b"", twin_artifact=None)


def _decode(reply: tuple) -> torch.Tensor:
    """Rebuild the tensor the attack returned; anything else is a malformed output."""
    if reply[0] == "object":
        raise referee.MalformedOutput(f"the attack returned {reply[1]}, not a torch.Tensor")
    if reply[0] == "device":
        raise referee.MalformedOutput(f"the attack returned a tensor on {reply[1]}, expected {reply[2]}")
    return torch.from_numpy(reply[1])


def _encode(output: object, x: torch.Tensor) -> tuple:
    if not isinstance(output, torch.Tensor):
        return ("object", type(output).__name__)
    if output.device != x.device:
        return ("device", str(output.device), str(x.device))
    return ("tensor", output.detach().cpu().numpy())


def _attack_setup(conn: Connection, process: AttackProcess):  # noqa: ANN202 (a sandbox handler)
    """An attack's process: its plugin and the substitute loaded once, then one match after another.

    ``("match", spec)`` starts a match (``spec`` is :func:`attack_view`'s: only what its threat allows):
    a fresh instance of the attack, the model its threat hands over, seeds from the match's seed; the
    previous match's model and target are dropped. ``("batch", ...)`` runs the attack on a batch.
    """
    device = pick_device()
    track = process.track
    plugin = plugins.load(process.attack, process.cache_dir)
    substitute = load_model(process.substitute_artifact, device, None, process.cache_dir)
    match: dict[str, Any] = {}

    def start(spec: MatchSpec) -> tuple:
        match.clear()
        if spec.threat == "white-box":
            model = load_model(spec.defense_artifact, device, spec.defense, spec.cache_dir)
        elif spec.threat == "gray-box":
            assert spec.twin_artifact is not None
            model = load_model(spec.twin_artifact, device, spec.defense, spec.cache_dir)
        else:
            model = None
        torch.manual_seed(spec.seed)
        match["attack"] = plugin.instantiate()
        assert isinstance(match["attack"], Attack)
        match["target"] = ArenaTarget(
            spec.threat, conn, model, substitute, track.num_classes, track.input_shape, device
        )
        match["generator"] = torch.Generator(device=device).manual_seed(spec.seed)
        return ("started",)

    def handle(request: tuple) -> tuple:
        if request[0] == "match":
            return start(request[1])
        _, x, y, targets, allowance = request
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
        return _encode(match["attack"].run(target, x, torch.from_numpy(y).to(device), budget), x)

    return handle
