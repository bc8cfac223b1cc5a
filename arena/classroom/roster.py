"""The class at a glance: one line per team for the instructor (``arena team list``, the board's ``/status``).

Each line: repository (credentials redacted), last sync and its commit, last push (the newest version a
sync recorded), versions valid, invalid and waiting for validation, the matches of its defenses that were
disputed (played again with the defense apart, see :mod:`arena.play.match`), and the team's last failure: a
version that failed validation, a training of one of its defenses, or a match its own code lost (its
attack's, or its defense's where the referee blamed the defense). Reasons come without server paths;
logs never appear here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from arena.results.access import relative_paths
from arena.results.redaction import redact
from arena.store import WAITING, Job, Plugin, PluginVersion, Result, Team


@dataclass
class Failure:
    """A team's failure: when, of what kind, which plugin, and why (the first line of the reason)."""

    at: str
    kind: str  # validation | training | match
    plugin: str
    reason: str
    result_id: int | None = None


@dataclass
class TeamStatus:
    """One team's line."""

    id: int
    name: str
    repo: str | None
    branch: str
    path: str | None
    synced_commit: str | None
    synced_at: str | None
    last_push: str | None
    plugins: int
    valid: int
    invalid: int
    waiting: int
    last_failure: Failure | None
    disputed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The line as JSON-ready data."""
        return asdict(self)


def class_status(session: Session, shown: Callable[[set[str]], set[str]] | None = None) -> list[TeamStatus]:
    """Every team's line, by name. ``shown(result_keys)`` says which of these failed matches may count (a
    board viewer sees those of published rounds only); ``None``: all of them."""
    teams = session.execute(select(Team).order_by(Team.name)).scalars().all()
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    pushed: dict[int, datetime] = {}
    plugins: dict[int, int] = defaultdict(int)
    query = (
        select(Plugin.team_id, PluginVersion.status, func.count(), func.max(PluginVersion.created_at))
        .join(PluginVersion, PluginVersion.plugin_id == Plugin.id)
        .group_by(Plugin.team_id, PluginVersion.status)
    )
    for team_id, status, n, newest in session.execute(query):
        counts[team_id][status] += n
        pushed[team_id] = max(newest, pushed.get(team_id, newest))
    for team_id, n in session.execute(select(Plugin.team_id, func.count()).group_by(Plugin.team_id)):
        plugins[team_id] = n
    failures = _last_failures(session, shown)
    disputed = _disputed(session, shown)
    return [
        TeamStatus(
            id=team.id,
            name=team.name,
            repo=redact(team.repo_url) if team.repo_url else None,
            branch=team.branch,
            path=team.path,
            synced_commit=team.synced_commit,
            synced_at=_iso(team.synced_at),
            last_push=_iso(pushed.get(team.id)),
            plugins=plugins[team.id],
            valid=counts[team.id]["valid"],
            invalid=counts[team.id]["invalid"],
            waiting=sum(counts[team.id][status] for status in WAITING),
            last_failure=failures.get(team.id),
            disputed=disputed[team.id],
        )
        for team in teams
        if team.repo_url or plugins[team.id]
    ]


def _last_failures(session: Session, shown: Callable[[set[str]], set[str]] | None) -> dict[int, Failure]:
    """Per team id: its newest failure of validation, training or a match its own code lost."""
    versions = {
        row.id: row
        for row in session.execute(
            select(PluginVersion.id, Plugin.team_id, Plugin.name).join(Plugin, PluginVersion.plugin_id == Plugin.id)
        )
    }
    found: list[tuple[datetime, int, Failure]] = []
    invalid = select(PluginVersion.id, PluginVersion.errors, PluginVersion.evaluated_at, PluginVersion.created_at)
    for row in session.execute(invalid.where(PluginVersion.status == "invalid")):
        at = row.evaluated_at or row.created_at
        found.append((at, versions[row.id].team_id, _failure(at, "validation", versions[row.id].name, row.errors)))
    trainings = select(Job.params, Job.error, Job.finished_at, Job.queued_at).where(
        Job.kind.in_(("train-defense", "train-twin")), Job.state == "failed"
    )
    for job in session.execute(trainings):
        version = versions.get(job.params.get("defense"))
        if version is not None:
            at = job.finished_at or job.queued_at
            found.append((at, version.team_id, _failure(at, "training", version.name, job.error)))
    matches = select(
        Result.id,
        Result.key,
        Result.attack_version_id,
        Result.defense_version_id,
        Result.error,
        Result.metrics,
        Result.created_at,
    ).where(Result.status == "failed", Result.missing_inputs.is_(None))  # fmt: skip (a failed training counts above)
    failed = session.execute(matches).all()
    allowed = shown({r.key for r in failed}) if shown is not None else {r.key for r in failed}
    for result in failed:
        blame = (result.metrics or {}).get("blame")
        if result.key not in allowed or blame in ("disputed", "arena"):  # neither side's failure
            continue
        blamed = (
            result.defense_version_id if (result.metrics or {}).get("blame") == "defense" else result.attack_version_id
        )
        version = versions[blamed]
        failure = _failure(result.created_at, "match", version.name, result.error, result.id)
        found.append((result.created_at, version.team_id, failure))
    newest: dict[int, Failure] = {}
    for _, team_id, failure in sorted(found, key=lambda item: item[0]):
        newest[team_id] = failure
    return newest


def _disputed(session: Session, shown: Callable[[set[str]], set[str]] | None) -> dict[int, int]:
    """Per team id: its defenses' disputed matches (``shown`` as in :func:`class_status`)."""
    query = (
        select(Result.key, Plugin.team_id)
        .join(PluginVersion, PluginVersion.id == Result.defense_version_id)
        .join(Plugin, Plugin.id == PluginVersion.plugin_id)
        .where(
            or_(Result.metrics["disputed"].as_string().is_not(None), Result.metrics["blame"].as_string() == "disputed")
        )
    )
    rows = session.execute(query).all()
    allowed = shown({key for key, _ in rows}) if shown is not None else {key for key, _ in rows}
    counts: dict[int, int] = defaultdict(int)
    for key, team_id in rows:
        counts[team_id] += key in allowed
    return counts


def _failure(at: datetime, kind: str, plugin: str, reason: str | None, result_id: int | None = None) -> Failure:
    lines = relative_paths(reason or "").strip().splitlines()
    return Failure(at.isoformat(), kind, plugin, lines[0] if lines else "(no reason recorded)", result_id)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
