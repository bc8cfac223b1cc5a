"""Which plugins exist, which versions a round freezes, and which jobs it needs.

Everything is keyed by content (see docs/architecture.md): a job is written only when its output
(an artifact or a result) does not exist yet, so running the same round again plans zero jobs and
changing one attack plans only its row. A failed match is replayed, as a new attempt under a key of
its own, when it never ran for want of an input, or on request (``retry_failed``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena import evaluation, plugins, snapshots, validation
from arena.config import Settings
from arena.evaluation import EVALUATION_VERSION
from arena.plugins import PluginSource
from arena.referee import REFEREE_VERSION
from arena.store import (
    Artifact,
    Database,
    Job,
    JobInput,
    Plugin,
    PluginVersion,
    Result,
    Round,
    RoundEntry,
    RoundMatch,
    Team,
    TrackRow,
)
from arena.store.db import insert_once
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


def result_key(attack_hash: str, defense_hash: str, track: Track, threat: str, seed: int, evaluation: str) -> str:
    """Key of a match result: equal inputs, equal key, and the result is reused.

    ``evaluation`` is the key of the evaluation set (:func:`evaluation_key`), which names the secret.
    """
    return _digest(attack_hash, defense_hash, track.config(), threat, seed, REFEREE_VERSION, evaluation)


def evaluation_key(track: Track, fingerprint: str) -> str:
    """Key of a track's evaluation set: its images depend on the track, the secret and, for a private set, the file."""
    private = hashlib.sha256(Path(track.eval_path).read_bytes()).hexdigest() if track.evaluation == "private" else ""
    return _digest("evaluation", track.config(), EVALUATION_VERSION, fingerprint, private)


def store_evaluation(session: Session, settings: Settings, track: Track) -> str:
    """Build and store the evaluation set of ``track`` unless it is stored; return its key.

    Only the arena's process that holds the secret (and the data, and a private set) builds it; the
    workers read it from the database.
    """
    key = evaluation_key(track, secret_fingerprint(settings))
    if session.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key)):
        return key
    built = evaluation.build(track, settings.data_dir, settings.secret())
    meta = {"evaluation": track.evaluation, "images": len(built.y), "version": EVALUATION_VERSION}
    values = {"kind": "evaluation", "plugin_version_id": None, "track": track.name, "meta": meta}
    insert_once(session, Artifact, key=key, data=built.pack(track.levels), **values)
    return key


def attempt_key(content_key: str, attempt: int) -> str:
    """Key of a match's ``attempt``: the first (0) is stored under its content key, each replay under its own."""
    return content_key if attempt == 0 else _digest("replay", content_key, attempt)


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


def store_version(
    session: Session,
    source: PluginSource,
    team_name: str | None = None,
    path: str | None = None,
    name: str | None = None,
) -> tuple[PluginVersion, bool]:
    """The version of ``source`` (created, unvalidated, unless its content is known); whether it is new.

    The plugin is ``team_name``'s (default: the manifest's team) and called ``name`` (default: the
    manifest's name, else the folder's). The version becomes its plugin's current code (``seen_at``),
    and a withdrawn plugin returns.
    """
    manifest = source.manifest
    team_name = team_name or (manifest.team if manifest else UNREGISTERED_TEAM)
    name = name or (manifest.name if manifest else source.origin.rstrip("/").rsplit("/", 1)[-1])
    kind = manifest.kind if manifest else "unknown"
    team = session.scalar(select(Team).where(Team.name == team_name)) or Team(name=team_name)
    session.add(team)
    session.flush()
    plugin = session.scalar(select(Plugin).where(Plugin.team_id == team.id, Plugin.name == name))
    if plugin is None:
        plugin = Plugin(team=team, name=name, kind=kind)
        session.add(plugin)
        session.flush()
    plugin.withdrawn_at = None
    version = session.scalar(
        select(PluginVersion).where(
            PluginVersion.plugin_id == plugin.id, PluginVersion.content_hash == source.content_hash
        )
    )
    now = datetime.now(UTC)
    if version is not None:
        version.seen_at = now
        return version, False
    version = PluginVersion(
        plugin=plugin,
        content_hash=source.content_hash,
        commit=source.commit,
        source=source.origin[:500],
        path=path,
        archive=source.archive(),
        manifest=manifest.as_dict() if manifest else {},
        status="pending",
        valid=False,
        seen_at=now,
    )
    session.add(version)
    session.flush()
    return version, True


def apply_validation(version: PluginVersion, checked: validation.Validation) -> None:
    """Record a validation's outcome with the version: status, readable errors, declarations, smoke match."""
    version.valid = not checked.errors
    version.status = "valid" if version.valid else "invalid"
    version.errors = "\n".join(checked.errors) or None
    version.manifest = {k: v for k, v in version.manifest.items() if k != "declared"} | {"declared": checked.declared}
    version.checks = {"declared": checked.declared, "smoke": checked.smoke}
    version.log_tail = checked.log_tail or None
    version.evaluated_at = datetime.now(UTC)


def record_version(
    session: Session, source: PluginSource, settings: Settings, known: validation.Validation | None = None
) -> tuple[PluginVersion, bool]:
    """Store a plugin version (validated once, without a smoke match, unless ``known`` is its validation already)
    unless its content is known."""
    version, new = store_version(session, source)
    if new:
        apply_validation(version, known or validation.validate(source, settings.home / "plugin-cache"))
    return version, new


def record_plugins(
    db: Database, settings: Settings, known: Mapping[str, validation.Validation] | None = None
) -> list[SyncedPlugin]:
    """Discover every plugin (folders and entry points) and record the versions not seen before; ``known`` gives
    validations by content hash (another database of this machine validated that code: see arena.checks)."""
    report = []
    known = known or {}
    for source in plugins.discover(settings.plugin_dirs):
        with db.session() as session:
            version, new = record_version(session, source, settings, known.get(source.content_hash))
            status = "invalid" if not version.valid else "new" if new else "unchanged"
            errors = version.errors.splitlines() if version.errors else []
            report.append(SyncedPlugin(source.label, version.plugin.kind, source.content_hash, status, errors))
    return report


def latest_valid_versions(session: Session) -> list[PluginVersion]:
    """The current valid version of every plugin still in the game (not withdrawn).

    That is the valid version its last sync saw most recently: a broken push leaves the previous
    version in place, and reverting a folder to earlier code brings that code back.
    """
    rows = session.scalars(
        select(PluginVersion)
        .join(Plugin, PluginVersion.plugin_id == Plugin.id)
        .where(PluginVersion.valid.is_(True), Plugin.withdrawn_at.is_(None))
        .order_by(
            PluginVersion.plugin_id, func.coalesce(PluginVersion.seen_at, PluginVersion.created_at), PluginVersion.id
        )
    )
    return list({version.plugin_id: version for version in rows}.values())


# --------------------------------------------------------------------------------------------------
# Rounds and jobs
# --------------------------------------------------------------------------------------------------


class RoundError(Exception):
    """A round cannot do what was asked (another is open, it is closed already, it has not finished)."""


@dataclass
class Plan:
    """What planning decided: new jobs by kind, cells reused from the cache or replayed, and why jobs are new.

    ``reasons`` names each new job; ``causes`` counts them by (kind, cause), the cause being what
    changed: a new attack or defense version, a track, a pair that never met under these rules, or
    a replay of what failed before (see :func:`plan_matches`).
    """

    round_id: int | None
    new_jobs: Counter[str] = field(default_factory=Counter)
    cached: int = 0
    cells: int = 0
    replayed: int = 0
    reasons: list[str] = field(default_factory=list)
    causes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def summary(self) -> list[str]:
        """One line per cause, the most jobs first: ``12 match: new attack version students/pgd@1a2b3c4d``."""
        return [f"{count} {kind}: {cause}" for (kind, cause), count in self.causes.most_common()]

    def cells_line(self) -> str:
        """``161 matches, 147 reused from earlier results`` (and ``, 2 replayed`` when some failed before)."""
        replayed = f", {self.replayed} replayed" if self.replayed else ""
        return f"{self.cells} matches, {self.cached} reused from earlier results{replayed}"


def open_round(db: Database, tracks: list[Track], seed: int = 0, closes_at: datetime | None = None) -> int:
    """Open a round on ``tracks``; closing it (:func:`plan_round`) freezes the plugins and plans its jobs.

    At most one round is open at a time: pushes during it are validated and enter it when it closes.
    """
    now = datetime.now(UTC)
    if closes_at is not None and closes_at <= now:
        raise RoundError(f"the closing time {closes_at:%Y-%m-%d %H:%M} UTC has passed already")
    with db.session() as session:
        current = current_round(session)
        if current is not None:
            raise RoundError(f"round {current.number} is still open: close it first (arena round close)")
        for track in tracks:
            row = session.scalar(select(TrackRow).where(TrackRow.name == track.name))
            if row is None:
                session.add(TrackRow(name=track.name, config=track.config()))
            else:
                row.config = track.config()
        number = (session.scalar(select(func.max(Round.number))) or 0) + 1
        round_ = Round(number=number, seed=seed, tracks=[t.name for t in tracks], status="open", closes_at=closes_at)
        session.add(round_)
        session.flush()
        return round_.id


def current_round(session: Session) -> Round | None:
    """The open round, or None."""
    return session.scalars(select(Round).where(Round.status == "open").order_by(Round.number)).first()


def due_rounds(session: Session, now: datetime | None = None) -> list[Round]:
    """The open rounds whose scheduled closing time has come."""
    now = now or datetime.now(UTC)
    return list(session.scalars(select(Round).where(Round.status == "open", Round.closes_at <= now)))


def plan_round(
    db: Database,
    settings: Settings,
    round_id: int,
    tracks: dict[str, Track],
    retry_failed: bool = False,
    teams: set[str] | None = None,
) -> Plan:
    """Close an open round: freeze the latest valid version of every plugin, write the round's matrix
    and the jobs whose outputs do not exist yet (every other cell reuses its cached result).

    ``retry_failed`` replays the cells whose latest result failed (see :func:`plan_matches`); ``teams``
    keeps only those teams' plugins (``arena course`` plays the built-ins alone).
    """
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_ is None:
            raise LookupError(f"no round with id {round_id}")
        if round_.status != "open":
            raise RoundError(f"round {round_.number} is closed already ({round_.status})")
        unknown = [name for name in round_.tracks if name not in tracks]
        if unknown:
            raise RoundError(f"round {round_.number} plays track(s) {', '.join(unknown)}, unknown here")
        now = datetime.now(UTC)
        versions = latest_valid_versions(session)
        kept = [v for v in versions if teams is None or v.plugin.team.name in teams]
        round_.entries = [RoundEntry(plugin_version=v) for v in kept]
        round_.started_at = now
        attacks = [e.plugin_version for e in round_.entries if e.plugin_version.plugin.kind == "attack"]
        defenses = [e.plugin_version for e in round_.entries if e.plugin_version.plugin.kind == "defense"]
        plan = plan_matches(
            session, settings, attacks, defenses, [tracks[t] for t in round_.tracks], round_.seed, round_, retry_failed
        )
        round_.status, round_.finished_at = ("running", None) if plan.new_jobs else ("done", now)
        return plan


def publish_round(db: Database, round_id: int) -> None:
    """Publish a finished round: the board then shows its scores to everyone, read from the standings kept
    here (:mod:`arena.snapshots`; publishing a published round again scores it anew)."""
    with db.session() as session:
        round_ = session.get(Round, round_id)
        if round_ is None:
            raise LookupError(f"no round with id {round_id}")
        if round_.status != "done":
            raise RoundError(f"round {round_.number} is {round_.status}: publish it once it is done")
        snapshots.store(session, round_id)
        round_.published, round_.published_at = True, datetime.now(UTC)


def plan_matches(
    session: Session,
    settings: Settings,
    attacks: list[PluginVersion],
    defenses: list[PluginVersion],
    tracks: list[Track],
    seed: int,
    round_: Round | None = None,
    retry_failed: bool = False,
) -> Plan:
    """Plan every attack against every defense on ``tracks`` under each threat the attack plays.

    A cell reuses the latest attempt at its match (:func:`attempt_key`) unless that attempt failed
    and either never ran, for want of an input (a failed training leaves no artifact, so it is
    planned again, and the match with it), or ``retry_failed`` asks for it: then the cell is a new
    attempt under a key of its own, and the rounds that showed the failure keep showing it.
    """
    fingerprint = secret_fingerprint(settings)
    plan = Plan(round_.id if round_ else None)
    pending = set(session.scalars(select(Job.key).where(Job.state.in_(("queued", "running")))))
    failed = set(session.scalars(select(Job.key).where(Job.state == "failed", Job.kind != "match")))
    ids = [v.id for v in attacks + defenses]
    played = set(session.scalars(select(Result.attack_version_id).where(Result.attack_version_id.in_(ids))))
    played |= set(session.scalars(select(Result.defense_version_id).where(Result.defense_version_id.in_(ids))))
    trained = set(session.scalars(select(Artifact.plugin_version_id).where(Artifact.plugin_version_id.in_(ids))))

    def need(kind: str, key: str, params: dict, depends: list[str], why: str, cause: str) -> None:
        if key in pending:
            return
        exists = session.scalar(select(func.count()).select_from(Artifact).where(Artifact.key == key))
        if kind == "match":
            exists = session.scalar(select(func.count()).select_from(Result).where(Result.key == key))
        if exists:
            return
        if key in failed:
            cause = f"replay: the {why} failed before"
        inputs = [JobInput(key=input_key) for input_key in depends]
        session.add(Job(round_id=plan.round_id, kind=kind, key=key, params=params, depends_on=depends, inputs=inputs))
        pending.add(key)
        plan.new_jobs[kind] += 1
        plan.reasons.append(why)
        plan.causes[kind, cause] += 1

    evaluations = {track.name: store_evaluation(session, settings, track) for track in tracks}
    for track, attack, defense in product(tracks, attacks, defenses):
        declared = attack.manifest.get("declared", {})
        if track.norm not in declared.get("norms", ()):
            continue
        substitute = artifact_key("substitute", track, fingerprint)
        need("train-substitute", substitute, {"track": track.name}, [], f"substitute for {track.name}", track.name)
        model = artifact_key("defense", track, fingerprint, defense.content_hash)
        label, attack_label = _label(defense), _label(attack)
        fresh = f"new defense version {label}" if defense.id not in trained else f"track {track.name} for {label}"
        need("train-defense", model, {"track": track.name, "defense": defense.id}, [], f"training of {label}", fresh)
        for threat in declared.get("threats", ()):
            inputs = {model: "its defense's training", substitute: "the substitute's training"}
            inputs[evaluations[track.name]] = "the evaluation set"
            if threat == "gray-box":
                twin = artifact_key("twin", track, fingerprint, defense.content_hash)
                params = {"track": track.name, "defense": defense.id}
                need("train-twin", twin, params, [], f"twin of {label}", fresh)
                inputs[twin] = "its twin's training"
            hashes = (attack.content_hash, defense.content_hash)
            content = result_key(*hashes, track, threat, seed, evaluations[track.name])
            key, attempt, replay = _attempt(session, content, inputs, pending, retry_failed)
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
            if replay:
                cause = replay
            elif attack.id not in played:
                cause = f"new attack version {attack_label}"
            elif defense.id not in played:
                cause = f"new defense version {label}"
            else:
                cause = f"pairs not yet played on {track.name} with seed {seed} and referee {REFEREE_VERSION}"
            before = plan.new_jobs["match"]
            params = {"track": track.name, "threat": threat, "seed": seed, "attack": attack.id, "defense": defense.id}
            if attempt:
                params |= {"content_key": content, "attempt": attempt}
            need("match", key, params, list(inputs), f"{attack_label} vs {label} on {track.name}, {threat}", cause)
            new = plan.new_jobs["match"] > before
            plan.cached += not new
            plan.replayed += bool(new and replay)
    session.flush()
    return plan


def _attempt(
    session: Session, content_key: str, inputs: dict[str, str], pending: set[str], retry_failed: bool
) -> tuple[str, int, str | None]:
    """The attempt a cell shows: its key, its number, and why it replays a failed one (None: no replay).

    That is the latest attempt, or the next one when a replay is under way (another round's) or is due:
    the latest failed for want of inputs (named by ``inputs``: artifact key -> what makes it), or at all
    with ``retry_failed``.
    """
    columns = (Result.key, Result.attempt, Result.status, Result.missing_inputs)
    query = select(*columns).where(Result.content_key == content_key).order_by(Result.attempt.desc()).limit(1)
    latest = session.execute(query).first()
    if latest is None:
        return content_key, 0, None
    following = latest.attempt + 1
    if attempt_key(content_key, following) in pending:
        return attempt_key(content_key, following), following, None
    if latest.status != "failed":
        return latest.key, latest.attempt, None
    if latest.missing_inputs is not None:
        names = [inputs[key] for key in inputs if key in latest.missing_inputs] or ["an input"]
        return attempt_key(content_key, following), following, f"replay: {' and '.join(names)} failed before"
    if retry_failed:
        return attempt_key(content_key, following), following, "replay: it failed before (retry requested)"
    return latest.key, latest.attempt, None


def _label(version: PluginVersion) -> str:
    return f"{version.plugin.team.name}/{version.plugin.name}@{version.content_hash[:8]}"
