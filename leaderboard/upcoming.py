"""The round in play, for the front page: when it closes, which versions each team has in it so far,
and how far its matches have come; scores stay embargoed until it is published (:mod:`leaderboard.visibility`)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.commands import costs
from arena.store import Job, Plugin, PluginVersion, Result, Round, RoundEntry, RoundMatch, Team
from leaderboard.caching import public
from leaderboard.lookup import database, summary


def upcoming(session: Session) -> dict[str, Any] | None:
    """The newest round when it is not published yet: its summary, ``minutes_left`` before it closes (an
    open round with a closing time), its ``teams`` with the versions it holds (an open round: each
    plugin's current valid version, which closing would freeze), and its matches' ``cells`` by status."""
    newest = session.scalars(select(Round).order_by(Round.number.desc()).limit(1)).first()
    if newest is None or newest.published:
        return None
    left = None
    if newest.status == "open" and newest.closes_at is not None:
        left = max(0, int((newest.closes_at - datetime.now(UTC)).total_seconds() // 60))
    cells = None if newest.status == "open" else progress(session, newest.id)
    return summary(newest) | {"minutes_left": left, "teams": _versions(session, newest), "cells": cells}


def progress(session: Session, round_id: int) -> dict[str, int]:
    """The round's matrix cells by status (ok, failed, pending: no result yet), counted without scoring it
    (and shared between the public's views while no result arrives: :func:`leaderboard.caching.public`)."""
    return public(("progress", round_id), partial(_count, session, round_id))


def _count(session: Session, round_id: int) -> dict[str, int]:
    query = (
        select(Result.status, func.count())
        .select_from(RoundMatch)
        .outerjoin(Result, Result.key == RoundMatch.result_key)
        .where(RoundMatch.round_id == round_id)
        .group_by(Result.status)
    )
    counts = {"ok": 0, "failed": 0, "pending": 0}
    for status, n in session.execute(query):
        counts[status or "pending"] += n
    return counts


def _versions(session: Session, round_: Round) -> list[dict[str, Any]]:
    """Per team (by name): its plugins' versions in the round, or, while it is open, their current valid ones."""
    columns = (Team.id, Team.name, Plugin.id.label("plugin_id"), Plugin.name.label("plugin"), Plugin.kind)
    query = select(*columns, PluginVersion.content_hash).join(Plugin, PluginVersion.plugin_id == Plugin.id)
    query = query.join(Team, Plugin.team_id == Team.id)
    if round_.status == "open":  # as arena.plan.versions.latest_valid_versions chooses them, without the archives
        newest = func.coalesce(PluginVersion.seen_at, PluginVersion.created_at)
        rank = func.row_number().over(
            partition_by=PluginVersion.plugin_id, order_by=(newest.desc(), PluginVersion.id.desc())
        )
        valid = (
            select(PluginVersion.id.label("id"), rank.label("rank"))
            .join(Plugin, PluginVersion.plugin_id == Plugin.id)
            .where(PluginVersion.valid.is_(True), Plugin.withdrawn_at.is_(None))
            .subquery()
        )
        query = query.join(valid, valid.c.id == PluginVersion.id).where(valid.c.rank == 1)
    else:
        query = query.join(RoundEntry, RoundEntry.plugin_version_id == PluginVersion.id).where(
            RoundEntry.round_id == round_.id
        )
    teams: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in session.execute(query.order_by(Team.name, Plugin.kind, Plugin.name)):
        teams[row.name, row.id].append(
            {"plugin_id": row.plugin_id, "plugin": row.plugin, "kind": row.kind, "version": row.content_hash[:12]}
        )
    return [{"team": name, "team_id": team_id, "plugins": plugins} for (name, team_id), plugins in teams.items()]


def time_left(session: Session, round_id: int) -> float | None:
    """Seconds until the round's open jobs end, estimated (None: unknown): each takes what the round's ended jobs
    of its kind took (their median), else what :mod:`arena.commands.costs` estimates from this arena's past jobs,
    else (a training) what the round's other trainings took; the jobs running now count half, and the jobs run as
    many at a time as run now."""
    query = select(Job.kind, Job.state, Job.started_at, Job.finished_at).where(Job.round_id == round_id)
    took: dict[str, list[float]] = defaultdict(list)
    left: dict[str, float] = defaultdict(float)
    running = 0
    for kind, state, started, finished in session.execute(query):
        if state == "done" and started and finished:
            took[kind].append((finished - started).total_seconds())
        elif state in ("queued", "running"):
            left[kind] += 1 if state == "queued" else 0.5
            running += state == "running"
    if not left:
        return None
    each = {kind: statistics.median(took[kind]) for kind in left if took[kind]}
    if len(each) < len(left):
        each = _estimated(round_id) | each
    trained = [seconds for kind, times in took.items() if kind.startswith("train-") for seconds in times]
    for kind in set(left) - set(each):
        if kind.startswith("train-") and trained:  # a twin trains as its defense does
            each[kind] = statistics.median(trained)
    if len(each) < len(left):
        return None
    return sum(n * each[kind] for kind, n in left.items()) / max(1, running)


def _estimated(round_id: int) -> dict[str, float]:
    """The seconds :mod:`arena.commands.costs` expects a queued job of each kind of the round to take, where it
    knows."""
    try:
        cost = costs.cost(database(), round_id)
    except KeyError:  # a job without the plugins a cost is read for (made by hand, not by the planner)
        return {}
    kinds = {made: kind for kind, made in costs.TRAININGS.items()}
    by_kind: dict[str, list[float | None]] = defaultdict(list)
    for training in cost.trainings:
        by_kind[kinds[training.kind]].append(training.seconds)
    each = {kind: sum(s) / len(s) for kind, s in by_kind.items() if None not in s}  # type: ignore[arg-type]
    if cost.matches and cost.match_seconds is not None:
        each["match"] = cost.match_seconds / cost.matches
    return each
