"""Validating a plugin as its team would want it: the manifest, the hooks, then a smoke match, all sandboxed.

1. **Load** (in a sandbox): the manifest, the module, the hooks, the class and its declarations.
2. **Smoke match** (when a :class:`SmokeKit` is given): a few samples of a tiny digits track against the
   arena's baseline. An attack plays the ``undefended`` defense under one threat it declares; a defense
   trains for one epoch, then faces ``fgsm`` in white-box. The match runs exactly as in a round (the
   same sandboxes and referee), so a plugin that crashes, times out or returns malformed outputs is
   stopped here, with a readable reason, before it enters a round.

Validation imports the plugin's code, so it never runs in the arena's own process. The baseline's
models (trained once, stored as artifacts) make up the kit; a failure to build them is the arena's
fault and raises, never blamed on the plugin being validated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import select

from arena.config import BUILTIN_PLUGIN_DIRS, Settings
from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play.match import MatchSpec, play
from arena.play.training import TRAINING_VERSION, TrainSpec, train_defense, train_substitute
from arena.rules import evaluation
from arena.rules.tracks import TRACKS, Track
from arena.sandbox import PluginFailure, Sandbox
from arena.store import Artifact, Database
from arena.store.db import insert_once

#: seconds loading a plugin may take (with a kit: its track's time limit)
TIME_LIMIT = 120.0
#: the smoke track: digits, a few samples, one epoch of training, a short time limit
SMOKE_TRACK = dataclasses.replace(
    TRACKS["digits"],
    name="smoke",
    eval_size=16,
    batch_size=16,
    epochs=1,
    max_queries=10,
    draws=2,
    time_limit=60.0,
    description="validation's smoke match: 16 digits, one epoch",
)
#: the budget of the smoke match in each norm
SMOKE_EPS = {"linf": 0.2, "l2": 1.0, "l0": 3.0}
BASELINE_ATTACK, BASELINE_DEFENSE = "fgsm", "undefended"
#: the kit's models: the baseline defense, its twin, the track's substitute
KIT_ROLES = ("defense", "twin", "substitute")
TWIN_SEED, DEFENSE_SEED = 2, 1


class BaselineError(RuntimeError):
    """The arena's baseline for smoke matches could not be built (the arena's fault, not the plugin's)."""


@dataclass
class Validation:
    """The outcome: readable errors (empty when valid), the class's declarations, the smoke match."""

    errors: list[str]
    declared: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class SmokeKit:
    """The arena's baseline for smoke matches: its plugins and trained models, and where to play."""

    attack: PluginSource
    defense: PluginSource
    defense_artifact: bytes
    twin_artifact: bytes
    substitute_artifact: bytes
    evaluation: bytes
    data_dir: Path
    cache_dir: Path
    track: Track = SMOKE_TRACK


def validate(source: PluginSource, cache_dir: Path, kit: SmokeKit | None = None) -> Validation:
    """Load ``source`` in a sandbox and, given a ``kit``, play its smoke match; every failure becomes an error.

    Raises :class:`arena.sandbox.SandboxError` when the arena itself could not run the sandbox.
    """
    if source.errors:
        return Validation(list(source.errors))
    label, limit = source.label, kit.track.time_limit if kit else TIME_LIMIT
    try:
        with Sandbox(_setup, (source, cache_dir), limit, label, writable=(cache_dir,)) as box:
            errors, declared = box.call(("validate",))
    except PluginFailure as exc:
        return Validation([exc.reason], log_tail=exc.log_tail)
    if errors or kit is None:
        return Validation(errors, declared)
    assert source.manifest is not None
    if source.manifest.kind == "attack":
        smoke, log_tail = _smoke_attack(source, declared, kit)
    else:
        smoke, log_tail = _smoke_defense(source, declared, kit)
    errors = [f"smoke match: {smoke['error']}"] if smoke["status"] != "ok" else []
    return Validation(errors, declared, smoke, log_tail)


def _setup(_conn: Connection, source: PluginSource, cache_dir: Path):  # noqa: ANN202 (a sandbox handler)
    def handle(_request: object) -> tuple[list[str], dict[str, Any]]:
        try:
            loaded = plugins.load(source, cache_dir)
        except plugins.PluginError as exc:
            return [str(exc)], {}
        cls = loaded.cls
        declared: dict[str, Any] = {"randomized": bool(getattr(cls, "randomized", False))}
        if loaded.manifest.kind == "attack":
            declared |= {"norms": list(cls.norms), "threats": list(cls.threats), "targeted": bool(cls.targeted)}
        return [], declared

    return handle


# --------------------------------------------------------------------------------------------------
# The smoke match
# --------------------------------------------------------------------------------------------------


def _smoke_attack(source: PluginSource, declared: dict[str, Any], kit: SmokeKit) -> tuple[dict[str, Any], str]:
    threats = declared["threats"]
    threat = "white-box" if "white-box" in threats else threats[0]
    norm = "linf" if "linf" in declared["norms"] else declared["norms"][0]
    track = dataclasses.replace(kit.track, norm=norm, eps=SMOKE_EPS[norm])
    spec = _spec(kit, source, kit.defense, track, threat, kit.defense_artifact, kit.twin_artifact)
    spec = dataclasses.replace(spec, targeted=bool(declared.get("targeted")))
    return _play(spec, against=kit.defense.label)


def _smoke_defense(source: PluginSource, declared: dict[str, Any], kit: SmokeKit) -> tuple[dict[str, Any], str]:
    try:
        trained, meta = train_defense(TrainSpec(source, kit.track, DEFENSE_SEED, kit.data_dir, kit.cache_dir))
    except PluginFailure as exc:
        return {"status": "failed", "error": f"training on {kit.track.name}: {exc.reason}"}, exc.log_tail
    spec = _spec(kit, kit.attack, source, kit.track, "white-box", trained, None)
    spec = dataclasses.replace(spec, randomized=bool(declared.get("randomized")))
    smoke, log_tail = _play(spec, against=kit.attack.label)
    smoke["training_seconds"] = round(meta["seconds"], 2)  # its one epoch: what a check estimates training from
    return smoke, log_tail


def _spec(
    kit: SmokeKit,
    attack: PluginSource,
    defense: PluginSource,
    track: Track,
    threat: str,
    model: bytes,
    twin: bytes | None,
) -> MatchSpec:
    return MatchSpec(
        attack=attack,
        defense=defense,
        track=track,
        threat=threat,
        seed=0,
        defense_artifact=model,
        twin_artifact=twin,
        substitute_artifact=kit.substitute_artifact,
        evaluation=kit.evaluation,
        data_dir=kit.data_dir,
        cache_dir=kit.cache_dir,
    )


def _play(spec: MatchSpec, against: str) -> tuple[dict[str, Any], str]:
    outcome = play(spec)
    smoke: dict[str, Any] = {
        "against": against,
        "threat": spec.threat,
        "norm": spec.track.norm,
        "eps": spec.track.eps,
        "samples": spec.track.eval_size,
        "status": outcome.status,
        "seconds": round(outcome.wall_time, 2),
    }
    if outcome.status == "ok":
        keep = ("clean_accuracy", "robust_accuracy", "success_rate", "violations", "queries")
        smoke["metrics"] = {key: outcome.metrics.get(key) for key in keep}
    else:
        smoke["error"] = f"against {against} ({spec.threat}): {outcome.error}"
    return smoke, outcome.log_tail


# --------------------------------------------------------------------------------------------------
# The kit: the baseline's models, trained once and stored as artifacts
# --------------------------------------------------------------------------------------------------


def smoke_kit(db: Database, settings: Settings, track: Track = SMOKE_TRACK) -> SmokeKit:
    """The baseline for smoke matches on ``track``, training (and storing) what is not stored yet.

    Raises :class:`BaselineError` (the arena's fault) when the built-in baseline cannot be found or trained.
    """
    attack, defense = _builtin("attacks", BASELINE_ATTACK), _builtin("defenses", BASELINE_DEFENSE)
    cache_dir, data_dir = settings.home / "plugin-cache", settings.data_dir

    def artifact(role: str, train: Any, *parts: str) -> bytes:
        key = _key(role, defense.content_hash, track, *parts)
        with db.session() as session:
            data = session.scalar(select(Artifact.data).where(Artifact.key == key))
        if data is not None:
            return data
        try:
            data, meta = train()
        except PluginFailure as exc:
            raise BaselineError(f"the smoke baseline ({role}) could not be trained: {exc.reason}") from exc
        with db.session() as session:
            values = {"kind": "smoke", "plugin_version_id": None, "track": track.name, "data": data, "meta": meta}
            insert_once(session, Artifact, key=key, **values)
        return data

    def defense_model(seed: int) -> Any:
        return lambda: train_defense(TrainSpec(defense, track, seed, data_dir, cache_dir))

    def evaluation_set() -> tuple[bytes, dict[str, Any]]:  # kept too: building it loads the data set (seconds)
        return evaluation.build(track, data_dir, settings.secret()).pack(track.levels), {"images": track.eval_size}

    secret = hmac.new(settings.secret(), b"smoke evaluation", hashlib.sha256).hexdigest()  # names it, reveals nothing

    return SmokeKit(
        attack=attack,
        defense=defense,
        defense_artifact=artifact("defense", defense_model(DEFENSE_SEED)),
        twin_artifact=artifact("twin", defense_model(TWIN_SEED)),
        substitute_artifact=artifact("substitute", lambda: train_substitute(track, data_dir)),
        evaluation=artifact("evaluation", evaluation_set, secret, evaluation.EVALUATION_VERSION),
        data_dir=data_dir,
        cache_dir=cache_dir,
        track=track,
    )


def kit_keys(track: Track = SMOKE_TRACK) -> list[str]:
    """The artifact keys of the smoke kit's models on ``track``: the same in every arena (no secret is in them),
    so a check's scratch arena may copy them from the arena's database (:mod:`arena.commands.checks`)."""
    defense = _builtin("defenses", BASELINE_DEFENSE)
    return [_key(role, defense.content_hash, track) for role in KIT_ROLES]


def _builtin(kind: str, name: str) -> PluginSource:
    for folder in BUILTIN_PLUGIN_DIRS:
        if folder.name == kind and (folder / name).is_dir():
            source = plugins.read_folder(folder / name)
            if not source.errors:
                return source
    raise BaselineError(f"the smoke baseline {kind[:-1]} '{name}' is not among the built-in plugins")


def _key(role: str, defense_hash: str, track: Track, *extra: str) -> str:
    """The artifact key of a smoke model or evaluation set (kind ``smoke`` keeps it apart from the rounds' own)."""
    parts = ("smoke", role, defense_hash, track.config(), TRAINING_VERSION, *extra)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
