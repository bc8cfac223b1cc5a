"""One plugin: every version with its commit and content hash, its validation as the arena records it
(status, checks with the smoke match, errors, log tail), rounds, failed trainings and results."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from functools import partial
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from arena.results.access import relative_paths
from arena.results.curves import robustness_curve
from arena.results.scoring import plugin_entries
from arena.rules.hookspecs import THREATS
from arena.store import WAITING, Job, Plugin, PluginVersion, Result, Round, RoundEntry
from arena.store.records import unpack
from leaderboard.caching import kept, public
from leaderboard.lookup import database, get_or_404
from leaderboard.signin import may_see, private_log
from leaderboard.standing import plugin_standing
from leaderboard.teams import iso, team_line, validation_state
from leaderboard.visibility import public_keys, sees_everything

#: what a version row shows (never its archive)
_VERSION_COLUMNS = (
    PluginVersion.id,
    PluginVersion.content_hash,
    PluginVersion.commit,
    PluginVersion.source,
    PluginVersion.manifest,
    PluginVersion.valid,
    PluginVersion.errors,
    PluginVersion.status,
    PluginVersion.checks,
    PluginVersion.log_tail,
    PluginVersion.evaluated_at,
    PluginVersion.created_at,
)
_RESULT_COLUMNS = (
    Result.id,
    Result.key,
    Result.attack_version_id,
    Result.defense_version_id,
    Result.track,
    Result.threat,
    Result.status,
    Result.error,
    Result.metrics,
    Result.attempt,
)


def plugin(plugin_id: int) -> dict[str, Any]:
    """One plugin's page data (see :func:`_plugin`), shared between the public's views for the board's refresh time."""
    return public(("plugin", plugin_id), partial(_plugin, plugin_id))


def _plugin(plugin_id: int) -> dict[str, Any]:
    """One plugin: its versions (newest first), each with its validation, rounds, results and failures.

    ``never_validated``: no version passed validation; ``waiting`` and ``failed`` count the versions that
    wait for validation and those that failed it, which tells "not validated yet" from "rejected".
    Results of rounds not yet published are listed for the plugin's team and the instructor only; the
    others read how many there are (``withheld``).
    """
    with database().session() as session:
        found = get_or_404(session, Plugin, plugin_id, "plugin")
        owners = {found.team_id}  # who may see the plugin's logs (with the instructor)
        line = {
            "id": found.id,
            "name": found.name,
            "kind": found.kind,
            "team": team_line(found.team),
            "withdrawn_at": iso(found.withdrawn_at),
        }
        versions = session.execute(
            select(*_VERSION_COLUMNS).where(PluginVersion.plugin_id == plugin_id).order_by(PluginVersion.id.desc())
        ).all()
        ids = [v.id for v in versions]
        everything = may_see(owners)
        results, withheld, shown = _results(session, ids, everything)
        rounds = _rounds(session, ids)
        failures = _training_failures(session, set(ids), owners) if found.kind == "defense" else {}
        curves = _curves(session, ids, shown) if found.kind == "defense" else {}
        standing = plugin_standing(session, plugin_id, found.kind, {n for numbers in rounds.values() for n in numbers})
    return {
        "plugin": line,
        "standing": standing,
        "threats": list(THREATS),
        "instructor": sees_everything(),
        "never_validated": all(v.status != "valid" for v in versions),
        "waiting": sum(v.status in WAITING for v in versions),
        "failed": sum(v.status == "invalid" for v in versions),
        "versions": [
            {
                "id": v.id,
                "content_hash": v.content_hash,
                "version": v.content_hash[:12],
                "commit": v.commit,
                "source": v.source,
                "manifest": v.manifest,
                "valid": v.valid,
                **validation_state(v.status, v.errors, v.evaluated_at),
                "checks": v.checks,
                **private_log(v.log_tail, owners),
                "created_at": v.created_at.isoformat(),
                "rounds": rounds.get(v.id, []),
                "results": results.get(v.id, []),
                "withheld": withheld.get(v.id, 0),
                "training_failures": failures.get(v.id, []),
                "curves": curves.get(v.id, []),
            }
            for v in versions
        ],
    }


def _results(
    session: Session, version_ids: list[int], everything: bool
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, int], set[str]]:
    """Per version: its matches (as attack or defense), by track, threat and opponent (those of published
    rounds only unless ``everything``), how many were left out, and the keys of the results shown."""
    mine = set(version_ids)
    rows = session.execute(
        select(*_RESULT_COLUMNS).where(
            or_(Result.attack_version_id.in_(version_ids), Result.defense_version_id.in_(version_ids))
        )
    ).all()
    withheld: dict[int, int] = defaultdict(int)
    if not everything:
        public = public_keys(session, [r.key for r in rows])
        for r in rows:
            if r.key not in public:
                for own in {r.attack_version_id, r.defense_version_id} & mine:
                    withheld[own] += 1
        rows = [r for r in rows if r.key in public]
    opponents = plugin_entries(session, {r.attack_version_id for r in rows} | {r.defense_version_id for r in rows})
    results: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        sides = [
            (r.attack_version_id, r.defense_version_id, "attack"),
            (r.defense_version_id, r.attack_version_id, "defense"),
        ]
        for own, other, role in sides:
            if own not in mine:
                continue
            metrics = r.metrics or {}
            results[own].append(
                {
                    "id": r.id,
                    "role": role,
                    "track": r.track,
                    "threat": r.threat,
                    "opponent": asdict(opponents[other]),
                    "status": r.status,
                    "attempt": r.attempt,
                    "error": relative_paths(r.error),
                    "robust_accuracy": metrics.get("robust_accuracy"),
                    "success_rate": metrics.get("success_rate"),
                }
            )
    for lines in results.values():
        lines.sort(key=lambda x: (x["track"], x["threat"], x["opponent"]["team"], x["opponent"]["plugin"]))
    return results, withheld, {r.key for r in rows}


def _curves(session: Session, version_ids: list[int], shown: set[str]) -> dict[int, list[dict[str, Any]]]:
    """Per defense version and board (track, threat): its worst-case robustness curve over the attacks it
    met, from the results ``shown`` on the page. Results are written once, so a curve is made once per set
    of results and kept."""
    columns = (Result.key, Result.defense_version_id, Result.track, Result.threat, Result.metrics)
    rows = session.execute(
        select(*columns).where(
            Result.defense_version_id.in_(version_ids), Result.status == "ok", Result.samples.is_not(None)
        )
    ).all()
    rows = [row for row in rows if row.key in shown]
    boards: dict[tuple[int, str, str], list[Any]] = defaultdict(list)
    for row in rows:
        boards[row.defense_version_id, row.track, row.threat].append(row)
    curves: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (version_id, track, threat), group in sorted(boards.items()):
        metrics = group[0].metrics or {}
        if metrics.get("norm") not in ("l0", "l2", "linf"):
            continue
        keys = tuple(sorted(row.key for row in group))
        curve = kept("curves").get(keys, partial(_curve, session, keys, metrics["norm"], float(metrics["eps"])))
        if curve:
            curves[version_id].append({"track": track, "threat": threat, "attacks": len(group), "curve": curve})
    return curves


def _curve(session: Session, keys: tuple[str, ...], norm: str, eps: float) -> list[dict[str, float]]:
    """The worst-case robustness curve over the results ``keys`` (empty unless their samples align)."""
    records = [unpack(samples) for samples in session.scalars(select(Result.samples).where(Result.key.in_(keys)))]
    if len({len(r["index"]) for r in records}) != 1:
        return []
    return robustness_curve(records, norm, eps)


def _rounds(session: Session, version_ids: list[int]) -> dict[int, list[int]]:
    """Per version: the numbers of the rounds that froze it."""
    query = (
        select(RoundEntry.plugin_version_id, Round.number)
        .join(Round, Round.id == RoundEntry.round_id)
        .where(RoundEntry.plugin_version_id.in_(version_ids))
        .order_by(Round.number)
    )
    rounds: dict[int, list[int]] = defaultdict(list)
    for version_id, number in session.execute(query):
        rounds[version_id].append(number)
    return rounds


def _training_failures(session: Session, version_ids: set[int], owners: set[int]) -> dict[int, list[dict[str, Any]]]:
    """Per defense version: its failed training jobs (defense or twin) with their error and, for ``owners``
    (and the instructor), their log tail."""
    query = select(Job.id, Job.kind, Job.params, Job.error, Job.log_tail, Job.finished_at).where(
        Job.kind.in_(("train-defense", "train-twin")), Job.state == "failed"
    )
    failures: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for job in session.execute(query):
        version_id = job.params.get("defense")
        if version_id in version_ids:
            failures[version_id].append(
                {
                    "job": job.id,
                    "kind": job.kind,
                    "track": job.params.get("track"),
                    "error": relative_paths(job.error),
                    **private_log(job.log_tail, owners),
                    "finished_at": iso(job.finished_at),
                }
            )
    return failures
