"""One match end to end: the attack and the defense each play in a sandbox; the referee judges.

No plugin code runs in the arena's process. The defended model lives in *defense hosts* (:mod:`arena.play.hosts`:
sandboxes that load it and answer for it, never seeing a label); the attack lives in its own sandbox
(:mod:`arena.play.attackers`) and gets what its threat model allows (:mod:`arena.play.threats`): under white-box the
defended model, under gray-box the twin, under black-box nothing of the defense at all. Queries cross from the
attack to the arena, which counts them, and on to a defense host. Clean and adversarial inputs are judged by
two fresh hosts, each a secret mix of both that never holds two versions of one image (:mod:`arena.play.judging`):
a defense can neither remember one version to answer the other nor tell a batch of attacks by its company.

Blame goes by whose code ran (:mod:`arena.play.watch`). A failure in a defense host is the defense's: the match counts
against it. When the attack's process fails while the defense's code runs in it, or the defense's code fails
there and not when the arena replays the batch alone, the match is played again *apart*: the attack in a fresh
process, the defended model in a host of its own answering its forward and backward passes. What fails there is
its author's; if the attack fails apart, the match is *disputed*: neither side's failure, counted on both rows.

The images come from the track's evaluation set (:mod:`arena.rules.evaluation`, built by the planner from the
arena's secret); no sandbox reads a data set: the attack asks the arena for the training split when it
uses ``target.train_data``. What the defense sees, an adversarial input or a query, lies on the track's
pixel grid (:func:`arena.rules.referee.quantize_within`).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from arena.play import hosts
from arena.play.attackers import Attacked, AttackPool, Suspect, play_attack
from arena.play.hosts import DefenseFault
from arena.play.judging import judged, photographed
from arena.play.matchspec import WITHHELD, MatchSpec, attack_view, host_of
from arena.play.warm import Warm
from arena.rules import referee
from arena.rules.evaluation import EvalSet
from arena.sandbox import PluginFailure
from arena.store.records import pack

__all__ = ["WITHHELD", "AttackPool", "MatchOutcome", "MatchSpec", "Warm", "attack_view", "play"]


@dataclass
class MatchOutcome:
    """What the referee decided: ``ok`` with metrics and records, or ``failed`` with the reason (``blame`` in
    the metrics: ``defense`` when the defense's code lost it, ``disputed`` when neither side's failure)."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: bytes | None = None
    gallery: bytes | None = None
    error: str | None = None
    log_tail: str = ""
    wall_time: float = 0.0


def play(spec: MatchSpec, warm: Warm | None = None, scope: Hashable = None) -> MatchOutcome:
    """Play one match; a plugin's failure fails only this match, with its reason and log tail.

    With a worker's ``warm`` state, the attack plays in a warm process (see :class:`AttackPool`) that serves only
    matches of the same ``scope`` (the round: what an attack learned in one round never reaches the next, where a
    new version of a defense it queried may play), and the model's timing and clean verdict are kept; else in a
    fresh process, with nothing kept.
    """
    started = time.perf_counter()
    pool = warm.attacks if warm is not None else None
    kept = warm if warm is not None else Warm()  # its attack pool unused: the match's process is a fresh one
    evaluation = EvalSet.unpack(spec.evaluation)
    disputed: Suspect | None = None
    log_tail = ""
    try:
        hosts.probe(
            host_of(spec, kept.timings), evaluation.x, kept.timings
        )  # on a GPU worker, where this model's hosts run: decided first
        try:
            attacked = play_attack(spec, evaluation, kept.timings, pool, scope)
        except Suspect as suspect:
            disputed, log_tail = suspect, suspect.log_tail
            attacked = play_attack(spec, evaluation, kept.timings, apart=True)
        log_tail = attacked.log_tail
        outcome = _judge(spec, evaluation, attacked, kept)
    except DefenseFault as fault:
        return _forfeit(fault, disputed, fault.log_tail or log_tail, time.perf_counter() - started)
    except PluginFailure as exc:
        seconds = time.perf_counter() - started
        if disputed is not None:
            return _disputed(disputed, str(exc), exc.log_tail, seconds)
        return MatchOutcome("failed", error=str(exc), log_tail=exc.log_tail, wall_time=seconds)
    if disputed is not None:
        outcome.metrics["disputed"] = f"{disputed.reason}; played again with the defense apart"
    outcome.wall_time = time.perf_counter() - started
    return outcome


def _judge(spec: MatchSpec, evaluation: EvalSet, attacked: Attacked, kept: Warm) -> MatchOutcome:
    """The referee's part: project and round the attack's output, have it judged, and record the outcome."""
    track, x, y, targets = spec.track, evaluation.x, evaluation.y, evaluation.targets
    draws = track.draws if spec.randomized else 1
    x_adv, moved = referee.project(attacked.outputs, x, track.norm, track.eps)
    x_adv = referee.quantize_within(x_adv, x, track.levels, track.norm, track.eps)
    seen, seen_adv = photographed(track, evaluation, x), photographed(track, evaluation, x_adv)
    clean, adv, measured = judged(spec, seen, seen_adv, draws, kept.timings, kept.verdicts)
    records = referee.judge(x, y, x_adv, moved, clean, adv, targets if spec.targeted else None)
    metrics = referee.metrics(records, spec.targeted, attacked.queries, attacked.seconds, draws) | measured
    return MatchOutcome(
        "ok",
        metrics=metrics | {"norm": track.norm, "eps": track.eps, "targeted": spec.targeted},
        samples=pack(records | {"index": evaluation.index.numpy()}),
        gallery=pack(referee.gallery(seen, seen_adv, records)),  # what the defense saw
        log_tail=attacked.log_tail,
    )


def _forfeit(fault: DefenseFault, disputed: Suspect | None, log_tail: str, seconds: float) -> MatchOutcome:
    """The outcome of a match the defense lost by failing: not the attack's failure (``blame``)."""
    how = f" ({disputed.reason}; it failed again with the defense apart)" if disputed is not None else ""
    error = f"the defense failed, so the match counts against it: {fault.reason}{how}"
    return MatchOutcome("failed", {"blame": "defense"}, error=error, log_tail=log_tail, wall_time=seconds)


def _disputed(suspect: Suspect, attack_failure: str, log_tail: str, seconds: float) -> MatchOutcome:
    """A match whose failure no one can be blamed for: the defense's code failed in the attack's process (and
    not alone), and the attack failed when the match was played again with the defense apart."""
    error = f"disputed: {suspect.reason}; played again with the defense apart, the attack failed: {attack_failure}"
    return MatchOutcome("failed", {"blame": "disputed"}, error=error, log_tail=log_tail, wall_time=seconds)
