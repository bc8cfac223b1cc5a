"""One match end to end: the attack plays in its sandbox, the referee judges in the arena's process.

The arena's process holds the secret defended model: it answers queries and classifies. The attack's
process gets what its threat model allows (:mod:`arena.threats`): under white-box it loads the
defended model, under gray-box the twin, under black-box nothing of the defense at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from arena import plugins, referee
from arena.hookspecs import Attack, Budget
from arena.plugins import PluginSource
from arena.records import pack
from arena.sandbox import PluginFailure, Sandbox
from arena.threats import ArenaTarget, QueryServer
from arena.tracks import Track
from arena.training import load_model, pick_device


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
    data_dir: Path
    cache_dir: Path


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


def play(spec: MatchSpec) -> MatchOutcome:
    """Play one match; a plugin's failure fails only this match, with its reason and log tail."""
    started = time.perf_counter()
    device = pick_device()
    track = spec.track
    x, y, index, targets = track.eval_set(spec.data_dir)
    x, y, targets = x.to(device), y.to(device), targets.to(device)
    defense = plugins.load(spec.defense, spec.cache_dir)
    draws = track.draws if getattr(defense.cls, "randomized", False) else 1
    model = load_model(spec.defense_artifact, device, spec.defense, spec.cache_dir)
    attack_cls = plugins.load(spec.attack, spec.cache_dir).cls
    targeted = bool(getattr(attack_cls, "targeted", False))
    server = QueryServer(model, track.input_shape, device)
    outputs: list[torch.Tensor] = []
    box = Sandbox(_attack_setup, (attack_view(spec),), time_limit=track.time_limit, label=spec.attack.label)
    log_tail = ""
    try:
        with box:
            try:
                for start in range(0, len(x), track.batch_size):
                    stop = start + track.batch_size
                    server.allow(len(x[start:stop]) * track.max_queries)
                    request = ("batch", x[start:stop].cpu().numpy(), y[start:stop].cpu().numpy())
                    request += (targets[start:stop].cpu().numpy() if targeted else None, server.allowance)
                    output = _decode(box.call(request, on_query=server), device)
                    outputs.append(referee.check_output(output, x[start:stop]))
            finally:
                log_tail = box.log_tail  # read before close() removes the log with the sandbox's directory
    except (PluginFailure, referee.MalformedOutput) as exc:
        log = exc.log_tail if isinstance(exc, PluginFailure) else log_tail
        return MatchOutcome("failed", error=str(exc), log_tail=log, wall_time=time.perf_counter() - started)
    attack_seconds = time.perf_counter() - started
    x_adv, moved = referee.project(torch.cat(outputs), x, track.norm, track.eps)
    clean = referee.classify(model, x, draws)
    adv = referee.classify(model, x_adv, draws)
    records = referee.judge(x, y, x_adv, moved, clean, adv, targets if targeted else None)
    metrics = referee.metrics(records, targeted, server.total, attack_seconds, draws)
    return MatchOutcome(
        "ok",
        metrics=metrics | {"norm": track.norm, "eps": track.eps, "targeted": targeted},
        samples=pack(records | {"index": index.numpy()}),
        gallery=pack(referee.gallery(x, x_adv, records)),
        log_tail=log_tail,
        wall_time=time.perf_counter() - started,
    )


def attack_view(spec: MatchSpec) -> MatchSpec:
    """The spec as the attack's process may see it: only the model its threat hands over.

    The attack's process receives this spec whole, so whatever it holds, the attack can reach
    (through its frames or the garbage collector): under gray-box the defended model's artifact is
    withheld, under black-box the defense's artifacts and its code are (the substitute stays).
    """
    if spec.threat == "white-box":
        return replace(spec, twin_artifact=None)
    if spec.threat == "gray-box":
        return replace(spec, defense_artifact=b"")
    withheld = PluginSource(origin="withheld", files={})
    return replace(spec, defense=withheld, defense_artifact=b"", twin_artifact=None)


def _decode(reply: tuple, device: torch.device) -> torch.Tensor:
    """Rebuild the tensor the attack returned; anything else is a malformed output."""
    if reply[0] != "tensor":
        raise referee.MalformedOutput(f"the attack returned {reply[1]}, not a torch.Tensor")
    _, array, original_device = reply
    if original_device != str(device):
        raise referee.MalformedOutput(f"the attack returned a tensor on {original_device}, expected {device}")
    return torch.from_numpy(array).to(device)


def _encode(output: object) -> tuple:
    if isinstance(output, torch.Tensor):
        return ("tensor", output.detach().cpu().numpy(), str(output.device))
    return ("object", type(output).__name__)


def _attack_setup(conn: Connection, spec: MatchSpec):  # noqa: ANN202 (a sandbox handler)
    device = pick_device()
    track = spec.track
    attack = plugins.load(spec.attack, spec.cache_dir).instantiate()
    assert isinstance(attack, Attack)
    if spec.threat == "white-box":
        model = load_model(spec.defense_artifact, device, spec.defense, spec.cache_dir)
    elif spec.threat == "gray-box":
        assert spec.twin_artifact is not None
        model = load_model(spec.twin_artifact, device, spec.defense, spec.cache_dir)
    else:
        model = None
    substitute = load_model(spec.substitute_artifact, device, None, spec.cache_dir)
    target = ArenaTarget(
        spec.threat,
        conn,
        model,
        substitute,
        track.train_set(spec.data_dir),
        track.num_classes,
        track.input_shape,
        device,
    )
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    torch.manual_seed(spec.seed)

    def handle(request: tuple) -> tuple:
        _, x, y, targets, allowance = request
        target.open_call(allowance)
        budget = Budget(
            norm=track.norm,
            eps=track.eps,
            max_queries=track.max_queries,
            generator=generator,
            targets=None if targets is None else torch.from_numpy(targets).to(device),
        )
        output = attack.run(target, torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), budget)
        return _encode(output)

    return handle
