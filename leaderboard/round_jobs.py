"""Job progress of a round: counts by kind and state, what runs now, what failed and why, what waits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from sqlalchemy import func, select

from arena.plan.planner import JOB_ORDER
from arena.results.access import relative_paths
from arena.results.scoring import plugin_entries
from arena.store import Job
from leaderboard.lookup import database, rounds, summary
from leaderboard.signin import private_log
from leaderboard.upcoming import time_left

STATES = ("queued", "running", "done", "failed")
#: jobs listed per state (the counts cover them all)
LISTED = {"running": 200, "failed": 200, "queued": 100, "done": 25}
#: seconds between reloads of the page while its round runs
REFRESH_SECONDS = 5


def jobs(args: Mapping[str, str]) -> dict[str, Any]:
    """The jobs of round ``args["round"]`` (by default the latest): counts, and the jobs of each state."""
    with database().session() as session:
        every, chosen = rounds(session, args.get("round") or None)
        counts: dict[str, Counter[str]] = {}
        listed: dict[str, list[Any]] = {state: [] for state in STATES}
        if chosen is not None:
            query = (
                select(Job.kind, Job.state, func.count()).where(Job.round_id == chosen.id).group_by(Job.kind, Job.state)
            )
            for kind, state, n in session.execute(query):
                counts.setdefault(kind, Counter())[state] = n
            for state, limit in LISTED.items():
                newest_first = Job.finished_at.desc() if state in ("done", "failed") else Job.id
                listed[state] = session.scalars(
                    select(Job).where(Job.round_id == chosen.id, Job.state == state).order_by(newest_first).limit(limit)
                ).all()
        versions = {v for js in listed.values() for j in js for v in (j.params.get("attack"), j.params.get("defense"))}
        entries = plugin_entries(session, {v for v in versions if isinstance(v, int)})
        left = time_left(session, chosen.id) if chosen is not None and chosen.status == "running" else None
    kinds = sorted(counts, key=lambda k: (JOB_ORDER.index(k) if k in JOB_ORDER else len(JOB_ORDER), k))
    return {
        "rounds": [r.number for r in every],
        "round": summary(chosen),
        "refresh": REFRESH_SECONDS if chosen is not None and chosen.status == "running" else None,
        "left": left,
        "states": list(STATES),
        "counts": [{"kind": k} | {s: counts[k][s] for s in STATES} for k in kinds],
        "totals": {s: sum(c[s] for c in counts.values()) for s in STATES},
        "jobs": {state: [_job(job, entries) for job in js] for state, js in listed.items()},
    }


def _job(job: Job, entries: dict[int, Any]) -> dict[str, Any]:
    attack, defense = entries.get(job.params.get("attack")), entries.get(job.params.get("defense"))
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "track": job.params.get("track"),
        "threat": job.params.get("threat"),
        "attack": asdict(attack) if attack else None,
        "defense": asdict(defense) if defense else None,
        "attempts": job.attempts,
        "worker": job.worker,
        "error": relative_paths(job.error),
        **private_log(job.log_tail if job.state == "failed" else None, _owners(job, attack, defense)),
        "queued_at": job.queued_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "seconds": (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None,
    }


def _owners(job: Job, attack: Any, defense: Any) -> set[int]:
    """The team whose log a job's log tail is: a match's attack's, a training's defense's (the
    substitute's is the arena's own: the instructor's)."""
    owner = attack if job.kind == "match" else defense
    return {owner.team_id} if owner is not None else set()
