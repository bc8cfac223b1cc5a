"""Which plugins exist, which versions a round freezes, and which jobs it needs.

Everything is keyed by content (see docs/architecture.md): a job is written only when its output
(an artifact or a result) does not exist yet, so running the same round again plans zero jobs and
changing one attack plans only its row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, field
from itertools import product

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena import plugins, validation
from arena.config import Settings
from arena.plugins import PluginSource
from arena.referee import REFEREE_VERSION
from arena.store import Artifact, Database, Job, Plugin, PluginVersion, Result, Round, RoundEntry, RoundMatch, Team
from arena.store import Track as TrackRow
from arena.tracks import Track
from arena.training import TRAINING_VERSION

UNREGISTERED_TEAM = "(unregistered)"
JOB_ORDER = ("train-substitute", "train-defense", "train-twin", "match")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def secret_fingerprint(settings: Settings) -> str:
    """Names the arena's secret in keys (so a new secret retrains), without revealing it."""
    return hmac.new(settings.secret(), b"fingerprint", hashlib.sha256).hexdigest()[:16]


def artifact_key(kind: str, track: Track, fingerprint: str, defense_hash: str | None = None) -> str:
    """Key of a trained model: ``defense`` and ``twin`` depend on the defense's code and the secret."""
    if kind == "substitute":
        return _digest("substitute", track.config(), TRAINING_VERSION)
    return _digest(kind, defense_hash, track.config(), TRAINING_VERSION, fingerprint)


def result_key(attack_hash: str, defense_hash: str, track: Track, threat: str, seed: int, fingerprint: str) -> str:
    """Key of a match result: equal inputs, equal key, and the result is reused."""
    return _digest(attack_hash, defense_hash, track.config(), threat, seed, REFEREE_VERSION, fingerprint)


# --------------------------------------------------------------------------------------------------
# Plugin versions
# --------------------------------------------------------------------------------------------------


@dataclass
class SyncedPlugin:
    """What syncing found for one plugin: its label, version, and status (new, unchanged, invalid)."""

    label: str
    kind: str
    content_hash: str
    status: str
    errors: list[str] = field(default_factory=list)


def record_version(session: Session, source: PluginSource, settings: Settings) -> tuple[PluginVersion, bool]:
    """Store a plugin version (validated once) unless its content is known; return it and whether it is new."""
    manifest = source.manifest
    team_name = manifest.team if manifest else UNREGISTERED_TEAM
    name = manifest.name if manifest else source.origin.rstrip("/").rsplit("/", 1)[-1]
    kind = manifest.kind if manifest else "unknown"
    team = session.scalar(select(Team).where(Team.name == team_name)) or Team(name=team_name)
    session.add(team)
    session.flush()
    plugin = session.scalar(select(Plugin).where(Plugin.team_id == team.id, Plugin.name == name))
    if plugin is None:
        plugin = Plugin(team=team, name=name, kind=kind)
        session.add(plugin)
        session.flush()
    version = session.scalar(
        select(PluginVersion).where(
            PluginVersion.plugin_id == plugin.id, PluginVersion.content_hash == source.content_hash
        )
    )
    if version is not None:
        return version, False
    checked = validation.validate(source, settings.home / "plugin-cache")
    errors, declared = checked.errors, checked.declared
    version = PluginVersion(
        plugin=plugin,
        content_hash=source.content_hash,
        commit=source.commit,
        source=source.origin,
        archive=source.archive(),
        manifest=(manifest.as_dict() if manifest else {}) | {"declared": declared},
        valid=not errors,
        errors="\n".join(errors) or None,
    )
    session.add(version)
    session.flush()
    return version, True


def sync(db: Database, settings: Settings) -> list[SyncedPlugin]:
    """Discover every plugin (folders and entry points) and record the versions not seen before."""
    report = []
    for source in plugins.discover(settings.plugin_dirs):
        with db.session() as session:
            version, new = record_version(session, source, settings)
            status = "invalid" if not version.valid else "new" if new else "unchanged"
            errors = version.errors.splitlines() if version.errors else []
            report.append(SyncedPlugin(source.label, version.plugin.kind, source.content_hash, status, errors))
    return report


def latest_valid_versions(session: Session) -> list[PluginVersion]:
    """The newest valid version of every plugin."""
    newest = (
        select(func.max(PluginVersion.id))
        .where(PluginVersion.valid.is_(True))
        .group_by(PluginVersion.plugin_id)
        .scalar_subquery()
    )
    return list(session.scalars(select(PluginVersion).where(PluginVersion.id.in_(newest))))


# --------------------------------------------------------------------------------------------------
# Rounds and jobs
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What planning decided: new jobs by kind, cells reused from the cache, and why jobs are new."""

    round_id: int | None
    new_jobs: Counter[str] = field(default_factory=Counter)
    cached: int = 0
    cells: int = 0
    reasons: list[str] = field(default_factory=list)


def open_round(db: Database, tracks: list[Track], seed: int = 0) -> int:
    """Create a round freezing the latest valid version of every plugin; return its number's id."""
    with db.session() as session:
        for track in tracks:
            row = session.scalar(select(TrackRow).where(TrackRow.name == track.name))
            if row is None:
                session.add(TrackRow(name=track.name, config=track.config()))
            else:
                row.config = track.config()
        number = (session.scalar(select(func.max(Round.number))) or 0) + 1
        round_ = Round(number=number, seed=seed, tracks=[t.name for t in tracks], status="open")
        round_.entries = [RoundEntry(plugin_version=v) for v in latest_valid_versions(session)]
        session.add(round_)
        session.flush()
        return round_.id


def plan_round(db: Database, settings: Settings, round_id: int, tracks: dict[str, Track]) -> Plan:
    """Write the round's matrix and the jobs whose outputs do not exist yet."""
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_ is None:
            raise LookupError(f"no round with id {round_id}")
        versions = [entry.plugin_version for entry in round_.entries]
        attacks = [v for v in versions if v.plugin.kind == "attack"]
        defenses = [v for v in versions if v.plugin.kind == "defense"]
        plan = plan_matches(
            session, settings, attacks, defenses, [tracks[t] for t in round_.tracks], round_.seed, round_
        )
        round_.status = "running" if plan.new_jobs else "done"
        return plan


def plan_matches(
    session: Session,
    settings: Settings,
    attacks: list[PluginVersion],
    defenses: list[PluginVersion],
    tracks: list[Track],
    seed: int,
    round_: Round | None = None,
) -> Plan:
    """Plan every attack against every defense on ``tracks`` under each threat the attack plays."""
    fingerprint = secret_fingerprint(settings)
    plan = Plan(round_.id if round_ else None)
    pending = set(session.scalars(select(Job.key).where(Job.state.in_(("queued", "running")))))

    def need(kind: str, key: str, params: dict, depends: list[str], why: str) -> None:
        if key in pending:
            return
        exists = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key))
        if kind == "match":
            exists = session.scalar(select(func.count()).select_from(Result).where(Result.key == key))
        if exists:
            return
        session.add(Job(round_id=plan.round_id, kind=kind, key=key, params=params, depends_on=depends))
        pending.add(key)
        plan.new_jobs[kind] += 1
        plan.reasons.append(why)

    for track, attack, defense in product(tracks, attacks, defenses):
        declared = attack.manifest.get("declared", {})
        if track.norm not in declared.get("norms", ()):
            continue
        substitute = artifact_key("substitute", track, fingerprint)
        need("train-substitute", substitute, {"track": track.name}, [], f"substitute for {track.name}")
        trained = artifact_key("defense", track, fingerprint, defense.content_hash)
        label = f"{defense.plugin.team.name}/{defense.plugin.name}@{defense.content_hash[:8]}"
        need("train-defense", trained, {"track": track.name, "defense": defense.id}, [], f"train {label}")
        for threat in declared.get("threats", ()):
            depends = [trained, substitute]
            if threat == "gray-box":
                twin = artifact_key("twin", track, fingerprint, defense.content_hash)
                need("train-twin", twin, {"track": track.name, "defense": defense.id}, [], f"twin of {label}")
                depends.append(twin)
            key = result_key(attack.content_hash, defense.content_hash, track, threat, seed, fingerprint)
            plan.cells += 1
            if round_ is not None:
                session.add(
                    RoundMatch(
                        round=round_,
                        result_key=key,
                        attack_version_id=attack.id,
                        defense_version_id=defense.id,
                        track=track.name,
                        threat=threat,
                    )
                )
            before = plan.new_jobs["match"]
            params = {"track": track.name, "threat": threat, "seed": seed, "attack": attack.id, "defense": defense.id}
            need("match", key, params, depends, f"{attack.plugin.name} vs {label} on {track.name}, {threat}")
            plan.cached += plan.new_jobs["match"] == before
    session.flush()
    return plan
