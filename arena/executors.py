"""The local executor: runs a round's queued jobs in-process, in dependency order, with a progress bar."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import select
from tqdm import tqdm

from arena import jobs
from arena.config import Settings
from arena.planner import JOB_ORDER
from arena.store import Artifact, Database, Job, Round
from arena.tracks import Track


def run_local(
    db: Database, settings: Settings, tracks: dict[str, Track], round_id: int | None, progress: bool = True
) -> Counter[str]:
    """Run every queued job (of ``round_id``, or without a round when None); return states by count."""
    with db.session() as session:
        in_round = Job.round_id.is_(None) if round_id is None else Job.round_id == round_id
        queued = session.scalars(select(Job).where(in_round, Job.state == "queued"))
        todo = sorted((JOB_ORDER.index(j.kind), j.id, j.kind, list(j.depends_on)) for j in queued)
    states: Counter[str] = Counter()
    bar = tqdm(todo, desc="jobs", unit="job", disable=not progress, leave=False)
    for _, job_id, kind, depends in bar:
        bar.set_postfix_str(kind)
        missing = _missing(db, depends)
        if missing:
            jobs.fail_job(db, job_id, f"an input could not be made: {missing}")
            states["failed"] += 1
            continue
        states[jobs.execute(db, settings, job_id, tracks, worker="local")] += 1
    if round_id is not None:
        finish_round(db, round_id)
    return states


def finish_round(db: Database, round_id: int) -> None:
    """Mark a round done once none of its jobs is queued or running."""
    with db.session() as session:
        open_jobs = session.scalars(
            select(Job.id).where(Job.round_id == round_id, Job.state.in_(("queued", "running")))
        ).first()
        round_ = session.get(Round, round_id)
        if open_jobs is None and round_.status != "done":
            round_.status, round_.finished_at = "done", datetime.now(UTC)


def _missing(db: Database, depends: list[str]) -> str | None:
    """Why a job's inputs are missing (the failed jobs that should have made them), or None."""
    if not depends:
        return None
    with db.session() as session:
        present = set(session.scalars(select(Artifact.key).where(Artifact.key.in_(depends))))
        absent = [key for key in depends if key not in present]
        if not absent:
            return None
        failed = session.scalars(select(Job).where(Job.key.in_(absent), Job.state == "failed")).all()
        reasons = sorted({f"{job.kind} failed: {job.error}" for job in failed})
        return "; ".join(reasons) or f"{len(absent)} artifact(s) never made"
