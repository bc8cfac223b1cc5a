"""What ``arena plugin check`` and ``arena play`` share: trained models and validations reused by key, and one plugin's
matches read back (what they will cost is :mod:`arena.commands.costs`).

Trained models are artifacts named by what made them (:func:`arena.plan.keys.artifact_key`: the defense's code, the
track, the arena's secret). A check's scratch arena shares the arena's secret (:meth:`arena.config.Settings.scratch`),
so a model the arena trained (a demo's defenses, their twins, the substitute) has the same key there: :func:`borrow`
copies it in instead of training it again, and :func:`verdicts` lends the validation the arena recorded for the same
code, so a check loads no built-in again. Only models and validations move, never results: a check's matches never
reach the class's board.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from arena.config import Settings
from arena.plan.keys import artifact_key, evaluation_key, secret_fingerprint
from arena.play import validation
from arena.rules.tracks import Track
from arena.store import Artifact, Database, Job, PluginVersion, Result
from arena.store.db import insert_once
from arena.store.records import unpack

#: the jobs that train a defense's code, and the model each makes
DEFENSE_TRAININGS = {"train-defense": "defense", "train-twin": "twin"}


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
    fingerprint = secret_fingerprint(settings)
    keys = []
    for track in tracks:
        keys += [artifact_key("substitute", track, fingerprint), evaluation_key(track, fingerprint)]
        for defense, kind in product(defenses, ("defense", "twin")):
            keys.append(artifact_key(kind, track, fingerprint, defense.content_hash))
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
            .where(Job.kind.in_(DEFENSE_TRAININGS), Job.log_tail.is_not(None))
            .order_by(Job.id)
        ).all()
    logs = {(DEFENSE_TRAININGS[kind], p["track"]): log for kind, p, log in rows if p.get("defense") == version_id}
    return [(kind, track, log) for (kind, track), log in sorted(logs.items())]


def _label(version: PluginVersion) -> str:
    return f"{version.plugin.team.name}/{version.plugin.name}"
