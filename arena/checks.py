"""What ``arena plugin check`` and ``arena play`` share: trained models reused by key, the cost said before anything
trains, and one plugin's matches read back.

Trained models are artifacts named by what made them (:func:`arena.planner.artifact_key`: the defense's code, the
track, the arena's secret). A check's scratch arena shares the arena's secret (:meth:`arena.config.Settings.scratch`),
so a model the arena trained (a demo's defenses, their twins, the substitute) has the same key there: :func:`borrow`
copies it in instead of training it again, and :func:`verdicts` lends the validation the arena recorded for the same
code, so a check loads no built-in again. Only models and validations move, never results: a check's matches never
reach the class's board.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from arena import planner, validation
from arena.config import Settings
from arena.plugins import BUILTIN_TEAM
from arena.records import unpack
from arena.store import Artifact, Database, Job, Plugin, PluginVersion, Result, Team
from arena.store.db import insert_once
from arena.tracks import Track

#: the defense whose trainings calibrate an estimate from a smoke epoch (the smoke kit's defense)
BASELINE = f"{BUILTIN_TEAM}/{validation.BASELINE_DEFENSE}"
#: the jobs that train, and the kind of artifact each makes
TRAININGS = {"train-defense": "defense", "train-twin": "twin", "train-substitute": "substitute"}


# --------------------------------------------------------------------------------------------------
# Borrowing from another database of this machine
# --------------------------------------------------------------------------------------------------


def lender(settings: Settings) -> tuple[Database | None, str | None]:
    """The database of the arena ``settings`` names, to borrow from, or None and why not (None when it does not
    exist: it is never created here)."""
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None, None
    db = Database(url)
    try:
        with db.session() as session:
            session.scalar(select(func.count()).select_from(Artifact))
    except SQLAlchemyError as exc:
        db.dispose()
        return None, f"cannot read {db.engine.url.render_as_string(hide_password=True)}: {type(exc).__name__}"
    return db, None


def model_keys(settings: Settings, defenses: Iterable[PluginVersion], tracks: Iterable[Track]) -> list[str]:
    """The keys of every model and evaluation set a match of ``defenses`` on ``tracks`` reads."""
    fingerprint = planner.secret_fingerprint(settings)
    keys = []
    for track in tracks:
        keys += [planner.artifact_key("substitute", track, fingerprint), planner.evaluation_key(track, fingerprint)]
        for defense, kind in product(defenses, ("defense", "twin")):
            keys.append(planner.artifact_key(kind, track, fingerprint, defense.content_hash))
    return keys


def borrow(source: Database | None, db: Database, keys: Iterable[str]) -> int:
    """Copy into ``db`` the artifacts named by ``keys`` that it lacks and ``source`` holds; return how many.

    An artifact's plugin version is found again by its content hash (ids differ between databases).
    """
    wanted = set(keys)
    if source is None or not wanted:
        return 0
    with db.session() as session:
        wanted -= set(session.scalars(select(Artifact.key).where(Artifact.key.in_(wanted))))
    if not wanted:
        return 0
    columns = (Artifact.key, Artifact.kind, Artifact.track, Artifact.data, Artifact.meta, PluginVersion.content_hash)
    with source.session() as session:
        found = session.execute(
            select(*columns)
            .outerjoin(PluginVersion, Artifact.plugin_version_id == PluginVersion.id)
            .where(Artifact.key.in_(wanted))
        ).all()
    with db.session() as session:
        for key, kind, track, data, meta, content_hash in found:
            version = session.scalar(select(PluginVersion.id).where(PluginVersion.content_hash == content_hash))
            values = {"kind": kind, "track": track, "data": data, "meta": meta, "plugin_version_id": version}
            insert_once(session, Artifact, key=key, **values)
    return len(found)


def verdicts(source: Database | None, content_hashes: Iterable[str]) -> dict[str, validation.Validation]:
    """The validations ``source`` recorded (valid or invalid) for these contents, by content hash."""
    hashes = set(content_hashes)
    if source is None or not hashes:
        return {}
    columns = (PluginVersion.content_hash, PluginVersion.errors, PluginVersion.checks, PluginVersion.log_tail)
    with source.session() as session:
        rows = session.execute(
            select(*columns).where(
                PluginVersion.content_hash.in_(hashes), PluginVersion.status.in_(("valid", "invalid"))
            )
        ).all()
    found = {}
    for content_hash, errors, checks, log_tail in rows:
        checks = checks or {}
        errors = errors.splitlines() if errors else []
        found[content_hash] = validation.Validation(errors, checks.get("declared") or {}, checks.get("smoke"), log_tail)
    return found


def validated(sources: Iterable[Database | None], content_hash: str) -> validation.Validation | None:
    """The validation, smoke match included, that one of ``sources`` recorded for this code: equal code, equal
    verdict, so a check of unchanged code plays its smoke match once."""
    for source in sources:
        found = verdicts(source, [content_hash]).get(content_hash)
        if found is not None and found.smoke is not None:
            return found
    return None


def kit_missing(db: Database) -> list[str]:
    """The roles of the smoke kit's models that ``db`` does not hold yet (``KIT_ROLES`` order)."""
    keys = validation.kit_keys()
    with db.session() as session:
        held = set(session.scalars(select(Artifact.key).where(Artifact.key.in_(keys))))
    return [role for role, key in zip(validation.KIT_ROLES, keys, strict=True) if key not in held]


# --------------------------------------------------------------------------------------------------
# The cost, said before anything trains
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Training:
    """A model to train: its kind (defense, twin, substitute), whose it is, where, and the estimate and its basis."""

    kind: str
    label: str
    track: str
    seconds: float | None
    basis: str = ""


@dataclass(frozen=True)
class Cost:
    """What a run will train and play, with estimates from what this machine measured before (None: unknown)."""

    trainings: list[Training]
    matches: int
    seconds_per_match: float | None

    @property
    def seconds(self) -> float | None:
        """The whole estimate, when every part of it is known."""
        parts = [t.seconds for t in self.trainings] + [self.seconds_per_match if self.matches else 0.0]
        return None if any(p is None for p in parts) else float(sum(p for p in parts if p is not None))


def cost(db: Database, round_id: int | None, others: Iterable[Database | None] = ()) -> Cost:
    """What the queued jobs of ``round_id`` (None: those of no round) will cost, estimated from earlier trainings
    of the same plugins and earlier matches on the same tracks, in ``db`` and ``others``; a defense never trained
    here is estimated from its smoke match's one epoch (:func:`_scaled`)."""
    sources = [db, *(o for o in others if o is not None)]
    with db.session() as session:
        in_round = Job.round_id.is_(None) if round_id is None else Job.round_id == round_id
        jobs = session.execute(select(Job.kind, Job.params).where(in_round, Job.state == "queued")).all()
        ids = {params.get("defense") for kind, params in jobs if kind != "match"} - {None}
        owners = {
            v.id: _Owner(v.plugin.team.name, v.plugin.name, _smoke_epoch(v))
            for v in session.scalars(select(PluginVersion).where(PluginVersion.id.in_(ids)))
        }
    trainings = [
        _estimate(sources, TRAININGS[kind], params["track"], owners.get(params.get("defense")))
        for kind, params in jobs
        if kind != "match"
    ]
    order = list(TRAININGS.values())
    trainings.sort(key=lambda t: (order.index(t.kind), t.label))
    per_match = [_median_match(sources, params["track"]) for kind, params in jobs if kind == "match"]
    known = [s for s in per_match if s is not None]
    return Cost(trainings, len(per_match), statistics.mean(known) if known and len(known) == len(per_match) else None)


@dataclass(frozen=True)
class _Owner:
    """Whose defense a training job trains, and how long its smoke match's one epoch took."""

    team: str
    plugin: str
    smoke_epoch: float | None


def _estimate(sources: list[Database], kind: str, track: str, owner: _Owner | None) -> Training:
    """A training with its estimate: its plugin's last training of that kind here, else one from its smoke epoch."""
    label = f"{owner.team}/{owner.plugin}" if owner else "the arena's substitute"
    seconds = _last_training(sources, kind, track, (owner.team, owner.plugin) if owner else None)
    if seconds is not None:
        return Training(kind, label, track, seconds, "its last training here")
    if owner is not None and owner.smoke_epoch is not None:
        basis = f"its smoke epoch, scaled as {BASELINE}'s training here"
        return Training(kind, label, track, _scaled(sources, track, owner.smoke_epoch), basis)
    return Training(kind, label, track, None)


def _scaled(sources: list[Database], track: str, smoke_epoch: float) -> float | None:
    """A training on ``track`` estimated from the defense's smoke epoch: times the ratio of the baseline's training
    on ``track`` to the baseline's smoke epoch, both measured on this machine (None where either is not)."""
    full = _last_training(sources, "defense", track, (BUILTIN_TEAM, validation.BASELINE_DEFENSE))
    with sources[0].session() as session:
        kit = session.scalar(select(Artifact.meta).where(Artifact.key == validation.kit_keys()[0]))
    epoch = kit.get("seconds") if kit else None
    return smoke_epoch * full / epoch if full is not None and isinstance(epoch, int | float) and epoch > 0 else None


def _smoke_epoch(version: PluginVersion) -> float | None:
    """Seconds the version's smoke match trained its one epoch (validation records it), if it did."""
    smoke = (version.checks or {}).get("smoke") or {}
    seconds = smoke.get("training_seconds") if isinstance(smoke, dict) else None
    return float(seconds) if isinstance(seconds, int | float) else None


def _last_training(sources: list[Database], kind: str, track: str, owner: tuple[str, str] | None) -> float | None:
    """Seconds the newest training of ``kind`` on ``track`` took (of ``owner``'s plugin, any version)."""
    query = select(Artifact.meta).where(Artifact.kind == kind, Artifact.track == track)
    if owner:
        query = (
            query.join(PluginVersion, Artifact.plugin_version_id == PluginVersion.id)
            .join(Plugin, PluginVersion.plugin_id == Plugin.id)
            .join(Team, Plugin.team_id == Team.id)
            .where(Team.name == owner[0], Plugin.name == owner[1])
        )
    for source in sources:
        with source.session() as session:
            meta = session.scalars(query.order_by(Artifact.id.desc()).limit(1)).first()
        if meta and isinstance(meta.get("seconds"), int | float):
            return float(meta["seconds"])
    return None


def _median_match(sources: list[Database], track: str) -> float | None:
    """The median seconds of the matches played on ``track``, in the first source that played any."""
    for source in sources:
        with source.session() as session:
            times = session.scalars(
                select(Result.wall_time).where(Result.track == track, Result.status == "ok").limit(2000)
            ).all()
        if times:
            return float(statistics.median(times))
    return None


# --------------------------------------------------------------------------------------------------
# One plugin's matches, read back
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One match of the checked plugin, as the referee recorded it."""

    attack: str
    defense: str
    threat: str
    status: str
    error: str | None
    log_tail: str
    metrics: dict[str, Any]
    survived: np.ndarray | None  # per sample (ok matches)
    rejected_clean: int | None
    rejected_adversarial: int | None

    @property
    def forfeited(self) -> bool:
        """Did the defense's own code fail it (the match then counts as every sample broken)?"""
        return self.status == "failed" and self.metrics.get("blame") == "defense"


def matches_of(db: Database, version_id: int, opponents: Iterable[int], track: str) -> list[Match]:
    """The latest attempt at every match of version ``version_id`` against ``opponents`` on ``track``."""
    wanted = set(opponents)
    with db.session() as session:
        rows = session.scalars(
            select(Result)
            .where(
                Result.track == track,
                or_(Result.attack_version_id == version_id, Result.defense_version_id == version_id),
            )
            .order_by(Result.attempt)
        ).all()
        latest = {}
        for row in rows:
            other = row.defense_version_id if row.attack_version_id == version_id else row.attack_version_id
            if other in wanted:
                latest[row.content_key] = row
        matches = [_match(row) for row in latest.values()]
    return sorted(matches, key=lambda m: (m.threat, m.attack, m.defense))


def _match(row: Result) -> Match:
    samples = unpack(row.samples) if row.samples else None
    return Match(
        attack=_label(row.attack_version),
        defense=_label(row.defense_version),
        threat=row.threat,
        status=row.status,
        error=row.error,
        log_tail=row.log_tail or "",
        metrics=dict(row.metrics or {}),
        survived=samples["survived"].astype(bool) if samples else None,
        rejected_clean=int(samples["clean_rejected"].sum()) if samples else None,
        rejected_adversarial=int(samples["adv_rejected"].sum()) if samples else None,
    )


def worst_case(matches: list[Match]) -> dict[str, float | None]:
    """Per threat: the share of samples that survived every attack, as the board ranks defenses (a match the
    defense's own code failed counts as every sample broken)."""
    threats: dict[str, list[Match]] = {}
    for match in matches:
        threats.setdefault(match.threat, []).append(match)
    worst: dict[str, float | None] = {}
    for threat, group in threats.items():
        survived = [m.survived for m in group if m.status == "ok" and m.survived is not None]
        aligned = len({len(s) for s in survived}) == 1
        worst[threat] = float(np.logical_and.reduce(survived).mean()) if survived and aligned else None
        if any(m.forfeited for m in group):
            worst[threat] = 0.0
    return worst


def training_logs(db: Database, version_id: int) -> list[tuple[str, str, str]]:
    """What the defense version printed while it trained, newest per kind and track: (kind, track, log tail)."""
    with db.session() as session:
        rows = session.execute(
            select(Job.kind, Job.params, Job.log_tail)
            .where(Job.kind.in_(("train-defense", "train-twin")), Job.log_tail.is_not(None))
            .order_by(Job.id)
        ).all()
    logs = {(TRAININGS[kind], p["track"]): log for kind, p, log in rows if p.get("defense") == version_id}
    return [(kind, track, log) for (kind, track), log in sorted(logs.items())]


def _label(version: PluginVersion) -> str:
    return f"{version.plugin.team.name}/{version.plugin.name}"
