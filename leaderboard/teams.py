"""Teams and their plugins, with the validation state of each as the arena records it."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from functools import partial
from typing import Any

from flask import abort
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from arena.classroom import pushes
from arena.classroom.roster import class_status
from arena.results.redaction import redact
from arena.store import WAITING, Plugin, PluginVersion, Round, RoundEntry, Team
from leaderboard.caching import public
from leaderboard.lookup import database, get_or_404
from leaderboard.signin import may_see
from leaderboard.standing import plugin_standing
from leaderboard.visibility import public_keys, sees_everything

#: what a waiting status means, in one line (a verdict, valid or invalid, speaks for itself)
EXPLANATIONS = {
    "pending": "recorded, not validated yet: the next sync validates it",
    "deferred": "over the team's daily validation limit: not validated yet; a sync validates it once the limit allows",
    "error": "the arena could not validate it (the arena's fault, not the plugin's, and not counted against the "
    "team's daily limit): the next sync tries again",
}


def teams() -> dict[str, Any]:
    """Every team with a summary of each of its plugins."""
    with database().session() as session:
        rows = session.execute(select(Team.id, Team.name, Team.repo_url, Team.branch).order_by(Team.name)).all()
        plugins = _plugin_lines(session)
    return {"teams": [team_line(row) | {"plugins": plugins.get(row.id, [])} for row in rows]}


def team(team_id: int) -> dict[str, Any]:
    """One team and its plugins, each with its standing per board (see :mod:`leaderboard.standing`); shared
    between the public's views for the board's refresh time."""
    return public(("team", team_id), partial(_team, team_id))


def _team(team_id: int) -> dict[str, Any]:
    with database().session() as session:
        row = get_or_404(session, Team, team_id, "team")
        plugins = _plugin_lines(session, team_id).get(team_id, [])
        played = _rounds_played(session, [p["id"] for p in plugins])
        for line in plugins:
            line["standing"] = plugin_standing(session, line["id"], line["kind"], played.get(line["id"], set()))
        received = pushes.history(session, team_id) if may_see({team_id}) else None  # the team's and the instructor's
    return {"team": team_line(row), "plugins": plugins, "instructor": sees_everything(), "pushes": received}


def _rounds_played(session: Session, plugin_ids: list[int]) -> dict[int, set[int]]:
    """Per plugin: the numbers of the rounds that froze one of its versions."""
    query = (
        select(PluginVersion.plugin_id, Round.number)
        .join(RoundEntry, RoundEntry.plugin_version_id == PluginVersion.id)
        .join(Round, Round.id == RoundEntry.round_id)
        .where(PluginVersion.plugin_id.in_(plugin_ids))
    )
    played: dict[int, set[int]] = defaultdict(set)
    for plugin_id, number in session.execute(query):
        played[plugin_id].add(number)
    return played


#: the columns the class status may be sorted by (``?sort=``, ``-`` first for descending)
STATUS_SORTS = ("name", "synced_at", "last_push", "plugins", "valid", "invalid", "waiting", "disputed")


def status(sort: str = "name") -> dict[str, Any]:
    """The class at a glance (see :mod:`arena.classroom.roster`): one line per team, sorted by ``sort`` (a column of
    :data:`STATUS_SORTS`; a line without the value last); failed matches of rounds not yet published count
    for the instructor only. Shared between the public's views for the board's refresh time."""
    field = sort.lstrip("-")
    if field not in STATUS_SORTS:
        abort(400, f"sort by one of {', '.join(STATUS_SORTS)} (- first: descending), not {sort!r}")
    data = public(("status",), _status)
    present = sorted((t for t in data["teams"] if t[field] is not None), key=lambda t: t[field], reverse=sort[0] == "-")
    return data | {"teams": present + [t for t in data["teams"] if t[field] is None], "sort": sort}


def _status() -> dict[str, Any]:
    with database().session() as session:
        everything = sees_everything()
        lines = class_status(session, None if everything else lambda keys: public_keys(session, keys))
    return {"teams": [line.as_dict() for line in lines], "instructor": everything}


def team_line(row: Any) -> dict[str, Any]:
    """A team (a row or a ``Team``) as the pages name it: id, name, repository and branch."""
    return {"id": row.id, "name": row.name, "repo_url": redact(row.repo_url), "branch": row.branch}


def validation_state(status: str, errors: str | None, evaluated_at: datetime | None) -> dict[str, Any]:
    """A version's validation as the pages show it: its status and what a waiting status means; the
    recorded text split by meaning, as ``errors`` (what validation found wrong with the plugin) or as
    ``note`` (the arena's reason for a wait: the daily limit and when it allows more, its own failure);
    and when validation ran."""
    lines = errors.splitlines() if errors else []
    waiting = status in WAITING
    return {
        "status": status,
        "explanation": EXPLANATIONS.get(status),
        "errors": [] if waiting else lines,
        "note": lines if waiting else [],
        "evaluated_at": iso(evaluated_at),
    }


def iso(moment: datetime | None) -> str | None:
    """A time as ISO 8601 text, or ``None``."""
    return moment.isoformat() if moment else None


def _plugin_lines(session: Session, team_id: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """Per team id: its plugins with their number of versions, valid versions and newest version's state."""
    query = (
        select(
            Plugin.id,
            Plugin.team_id,
            Plugin.name,
            Plugin.kind,
            Plugin.withdrawn_at,
            func.count(PluginVersion.id).label("versions"),
            func.sum(case((PluginVersion.status == "valid", 1), else_=0)).label("valid"),
            func.max(PluginVersion.id).label("newest"),
        )
        .outerjoin(PluginVersion, PluginVersion.plugin_id == Plugin.id)
        .group_by(Plugin.id)
        .order_by(Plugin.kind, Plugin.name)
    )
    if team_id is not None:
        query = query.where(Plugin.team_id == team_id)
    rows = session.execute(query).all()
    newest = {
        v.id: v
        for v in session.execute(
            select(
                PluginVersion.id,
                PluginVersion.content_hash,
                PluginVersion.commit,
                PluginVersion.valid,
                PluginVersion.status,
                PluginVersion.errors,
                PluginVersion.evaluated_at,
            ).where(PluginVersion.id.in_([r.newest for r in rows if r.newest is not None]))
        )
    }
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        latest = newest.get(r.newest)
        lines[r.team_id].append(
            {
                "id": r.id,
                "name": r.name,
                "kind": r.kind,
                "withdrawn_at": iso(r.withdrawn_at),
                "versions": r.versions,
                "valid_versions": int(r.valid or 0),
                "latest": {"version": latest.content_hash[:12], "commit": latest.commit, "valid": latest.valid}
                | validation_state(latest.status, latest.errors, latest.evaluated_at)
                if latest
                else None,
            }
        )
    return lines
