"""Teams and their plugins, with the validation state of each."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from arena.store import Plugin, PluginVersion, Team
from leaderboard.lookup import database, get_or_404


def teams() -> dict[str, Any]:
    """Every team with a summary of each of its plugins."""
    with database().session() as session:
        rows = session.execute(select(Team.id, Team.name, Team.repo_url, Team.branch).order_by(Team.name)).all()
        plugins = _plugin_lines(session)
    return {"teams": [team_line(row) | {"plugins": plugins.get(row.id, [])} for row in rows]}


def team(team_id: int) -> dict[str, Any]:
    """One team and its plugins."""
    with database().session() as session:
        row = get_or_404(session, Team, team_id, "team")
        plugins = _plugin_lines(session, team_id)
    return {"team": team_line(row), "plugins": plugins.get(team_id, [])}


def team_line(row: Any) -> dict[str, Any]:
    """A team (a row or a ``Team``) as the pages name it: id, name, repository and branch."""
    return {"id": row.id, "name": row.name, "repo_url": row.repo_url, "branch": row.branch}


def _plugin_lines(session: Session, team_id: int | None = None) -> dict[int, list[dict[str, Any]]]:
    """Per team id: its plugins with their number of versions, valid versions and newest version."""
    query = (
        select(
            Plugin.id,
            Plugin.team_id,
            Plugin.name,
            Plugin.kind,
            func.count(PluginVersion.id).label("versions"),
            func.sum(case((PluginVersion.valid, 1), else_=0)).label("valid"),
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
            select(PluginVersion.id, PluginVersion.content_hash, PluginVersion.commit, PluginVersion.valid).where(
                PluginVersion.id.in_([r.newest for r in rows if r.newest is not None])
            )
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
                "versions": r.versions,
                "valid_versions": int(r.valid or 0),
                "latest": {"version": latest.content_hash[:12], "commit": latest.commit, "valid": latest.valid}
                if latest
                else None,
            }
        )
    return lines
