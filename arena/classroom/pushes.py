"""Pushes announced by webhook: the team a delivery is for, its record, the sync it queues, and that sync.

The board's ``POST /hooks/push`` (:mod:`leaderboard.hooks`) hands a delivery to :func:`receive`: the teams
whose repository the payload names (and, in a shared class repository, whose folder the push touched), the
signature checked against their secrets, a redelivery recognised by its id, each team's pushes limited to
its daily limit. Each push queued is synced by :func:`run`, the sync of ``arena sync --team NAME``
(fetch, pin the commit, a version per changed plugin folder, validation in the sandbox), on a Celery worker
where there is a broker, else in a process of its own (``python -m arena.classroom.pushes ID...``), never in the board.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from arena.classroom import submissions
from arena.classroom.submissions import SubmissionError, TeamSync
from arena.classroom.webhooks import Delivery, Notice, Refused, notice, repo_key, repositories
from arena.config import Settings
from arena.store import Database, Push, Team

log = logging.getLogger(__name__)

#: the Celery task that syncs pushes, and its queue (every worker serves ``cpu``)
TASK, QUEUE = "arena.sync-pushes", "cpu"
#: statuses that count against a team's daily limit of pushes
COUNTED = ("queued", "running", "done", "failed")
#: statuses a redelivery tries again: the limit refused it, or it could not be queued
RETRIED = ("limited", "unsent")
#: how many pushes a team's page lists
SHOWN = 50


@dataclass
class Received:
    """What the arena did with a delivery: the HTTP status, the answer's body, the pushes to queue."""

    status: int
    answer: dict[str, Any]
    queue: list[int] = field(default_factory=list)
    retry_after: int | None = None


def receive(db: Database, sent: Delivery, body: bytes, data: Mapping[str, Any]) -> Received:
    """Check a delivery against the secrets of the teams its repository belongs to, and record its push.

    Raises :class:`Refused`: 400 without a repository, 404 for a repository no team has, 401 unsigned,
    403 signed with no secret of those teams.
    """
    named = repositories(sent.service, data)
    if not named:
        raise Refused(400, "the payload names no repository")
    with db.session() as session:
        teams = [
            t for t in session.scalars(select(Team).where(Team.repo_url.is_not(None))) if repo_key(t.repo_url) in named
        ]
        if not teams:
            raise Refused(
                404, f"no team has the repository {min(named)}: `arena team add NAME --repo URL` registers it"
            )
        if not sent.signature:
            raise Refused(401, "the delivery is not signed: give the webhook the team's secret")
        if not any(t.hook_secret and sent.verified(body, t.hook_secret) for t in teams):
            raise Refused(403, "the signature does not match the team's webhook secret")
        if sent.event == "ping":
            return Received(200, {"pong": [t.name for t in teams]})
        if sent.event != "push":
            return Received(200, {"ignored": f"a {sent.event} event: the arena syncs on push events only"})
        push = notice(sent, data)
        concerned = [t for t in teams if t.branch == push.branch and push.touches(t.path)]
        if push.deleted or not concerned:
            why = "it deletes the branch" if push.deleted else f"no team plays {push.ref} or the folders it changed"
            return Received(200, {"ignored": f"a push to {push.ref}: {why}"})
        try:
            with session.begin_nested():
                return _record(session, sent, push, concerned)
        except IntegrityError:  # the same delivery, received at the same moment by another board process
            return Received(200, {"duplicate": sent.delivery})


def _record(session: Session, sent: Delivery, push: Notice, teams: list[Team]) -> Received:
    """Record the push for each team (within its daily limit); a delivery seen before does nothing again."""
    earlier = {p.team_id: p for p in session.scalars(select(Push).where(Push.delivery == sent.delivery))}
    if earlier and all(p.status not in RETRIED for p in earlier.values()):
        return Received(200, {"duplicate": sent.delivery, "note": "received before: nothing done twice"})
    now, queued, limited, waits = datetime.now(UTC), [], [], []
    for team in teams:
        row = earlier.get(team.id)
        if row is not None and row.status not in RETRIED:
            continue
        if row is None:
            row = Push(
                team=team,
                service=sent.service,
                delivery=sent.delivery,
                ref=push.ref[:255],
                commit=(push.after or "")[:64] or None,
                pusher=push.pusher,
                received_at=now,
            )
            session.add(row)
        wait = _wait(session, team, now)
        row.status, row.error = ("queued", None) if wait is None else ("limited", _limited(team, now + wait))
        session.flush()
        (queued if wait is None else limited).append(row)
        waits += [] if wait is None else [wait]
    answer = {"queued": [r.team.name for r in queued], "limited": [r.team.name for r in limited]}
    if queued:
        return Received(202, answer, [r.id for r in queued])
    return Received(429, answer | {"error": limited[0].error}, retry_after=int(min(waits).total_seconds()) + 1)


def _wait(session: Session, team: Team, now: datetime) -> timedelta | None:
    """How long until the team's daily limit allows another push (None: it allows one now)."""
    since = now - timedelta(days=1)
    counted = (Push.team_id == team.id, Push.status.in_(COUNTED), Push.received_at >= since)
    used, first = session.execute(select(func.count(), func.min(Push.received_at)).where(*counted)).one()
    if used < submissions.daily_limit(team):
        return None
    return (first + timedelta(days=1) - now) if first else timedelta(days=1)


def _limited(team: Team, after: datetime) -> str:
    return (
        f"over the daily limit: team {team.name} may push {submissions.daily_limit(team)} times per 24 hours; "
        f"pushes after {after:%Y-%m-%d %H:%M} UTC are synced again (and `arena sync` syncs every team)"
    )


# --------------------------------------------------------------------------------------------------
# Queueing and running the syncs
# --------------------------------------------------------------------------------------------------


def dispatch(push_ids: list[int], broker_url: str | None, env: Mapping[str, str], home: Path) -> str:
    """Queue the syncs of ``push_ids``: a Celery task with a broker, else a process of its own that logs to
    ``home/logs/sync.log``. Returns where they went."""
    if broker_url:
        _celery(broker_url).send_task(TASK, args=[push_ids], queue=QUEUE)
        return "celery"
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "arena.classroom.pushes", *map(str, push_ids)]
    with open(logs / "sync.log", "ab") as out:
        process = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    threading.Thread(target=process.wait, daemon=True).start()  # reaped when it ends, never waited for
    return "process"


def unsent(db: Database, push_ids: list[int], reason: str) -> None:
    """Mark pushes that could not be queued: a redelivery of theirs tries again."""
    with db.session() as session:
        session.execute(update(Push).where(Push.id.in_(push_ids)).values(status="unsent", error=reason))


@functools.cache
def _celery(broker_url: str) -> Any:
    """A Celery app that only sends (the board never imports the workers' tasks, nor Celery without a broker)."""
    from celery import Celery

    app = Celery("arena-board", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
    return app


def run(db: Database, settings: Settings, push_id: int) -> str:
    """Sync the team of push ``push_id`` (once: a push no longer queued is left alone) and record what the sync
    found: the commit it pinned and each plugin folder that changed, with its verdict. Returns the push's status."""
    with db.session() as session:
        claim = update(Push).where(Push.id == push_id, Push.status == "queued").values(status="running")
        if session.execute(claim).rowcount != 1:
            return session.scalar(select(Push.status).where(Push.id == push_id)) or "unknown"
        name = session.scalar(select(Team.name).join(Push, Push.team_id == Team.id).where(Push.id == push_id))
    try:
        (report,) = submissions.sync_teams(db, settings, name)
    except SubmissionError as exc:
        report = TeamSync(name, error=str(exc))
    except Exception as exc:
        _finish(db, push_id, TeamSync(name, error=f"the arena failed to sync ({type(exc).__name__}: {exc})"))
        raise
    return _finish(db, push_id, report)


def _finish(db: Database, push_id: int, report: TeamSync) -> str:
    folders = [
        {"path": f.path, "label": f.label, "kind": f.kind, "status": f.status, "errors": f.errors}
        for f in report.folders
        if f.status != "unchanged"
    ]
    status = "failed" if report.error else "done"
    with db.session() as session:
        push = session.get(Push, push_id)
        push.status, push.finished_at, push.error = status, datetime.now(UTC), report.error
        push.synced_commit, push.folders = report.commit, folders
    log.info("push %d of team %s: %s at %s", push_id, report.team, status, (report.commit or "-")[:12])
    return status


def history(session: Session, team_id: int) -> list[dict[str, Any]]:
    """The team's newest pushes, as its page lists them (for the team and the instructor only)."""
    query = select(Push).where(Push.team_id == team_id).order_by(Push.received_at.desc(), Push.id.desc())
    return [
        {
            "received_at": p.received_at.isoformat(),
            "service": p.service,
            "ref": p.ref,
            "commit": p.commit,
            "pusher": p.pusher,
            "status": p.status,
            "finished_at": p.finished_at.isoformat() if p.finished_at else None,
            "synced_commit": p.synced_commit,
            "folders": p.folders or [],
            "error": p.error,
        }
        for p in session.scalars(query.limit(SHOWN))
    ]


def run_all(db: Database, settings: Settings, push_ids: list[int]) -> int:
    """Sync the pushes' teams one after the other (a failure logged, the others go on); return how many failed."""
    failed = 0
    for push_id in push_ids:
        try:
            failed += run(db, settings, push_id) == "failed"
        except Exception:
            log.exception("push %d: the sync failed", push_id)
            failed += 1
    return failed


def main(argv: list[str] | None = None) -> int:
    """``python -m arena.classroom.pushes ID...``: the process the board starts, without a broker, to sync pushes."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    ids = [int(a) for a in (argv if argv is not None else sys.argv[1:])]
    return 1 if run_all(Database(settings.database_url), settings, ids) else 0


if __name__ == "__main__":
    sys.exit(main())
