"""Following a distributed round: send its jobs to the Celery workers and keep it moving until it is done."""

from __future__ import annotations

import logging
import time
from collections import Counter

from sqlalchemy.exc import OperationalError
from tqdm import tqdm

from arena.config import Settings
from arena.execution.rounds import blocking_rounds, recorded_tracks
from arena.rules.tracks import Track
from arena.store import Database

log = logging.getLogger(__name__)

#: seconds between two sweeps while following a distributed round
FOLLOW_INTERVAL = 2.0
#: a follower waits at least this many times its last sweep's duration before the next: it takes at most a
#: fifth of a core from the workers, however long the round's queue (a sweep reads it whole)
SWEEP_RATIO = 4.0


def run_celery(
    db: Database,
    settings: Settings,
    tracks: dict[str, Track],
    round_id: int,
    wait: bool = True,
    progress: bool = True,
    interval: float = FOLLOW_INTERVAL,
    timeout: float | None = None,
) -> Counter[str]:
    """Send the round's jobs to the Celery workers of ``ARENA_BROKER_URL``; return its jobs by state.

    With ``wait``, follow the round until it is done: every ``interval`` seconds (or :data:`SWEEP_RATIO`
    times the last sweep's duration, if longer), send the jobs that became ready and take back those of
    lost workers (:class:`arena.execution.dispatch.Dispatcher`), in this round and in the rounds whose jobs
    it waits for. An unreachable broker or database is waited for; after ``timeout`` seconds, ``TimeoutError``.
    """
    from arena.execution import dispatch, tasks  # distributed mode only: Celery and Redis are optional dependencies

    assert settings.broker_url is not None
    app, keys = tasks.create_app(settings.broker_url), dispatch.Keys(settings.broker_url)
    dispatcher = dispatch.Dispatcher(db, app, keys, settings)
    try:
        started = time.monotonic()
        states = dispatcher.sweep(round_id, tracks)
        swept = time.monotonic() - started
        if not wait:
            return states
        bar = tqdm(total=sum(states.values()), desc="jobs", unit="job", disable=not progress, leave=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        while blocking := blocking_rounds(db, round_id):
            bar.n = states["done"] + states["failed"]
            bar.set_postfix(running=states["running"], failed=states["failed"], refresh=True)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"round {round_id} not done after {timeout:.0f} s: jobs {dict(states)}")
            time.sleep(max(interval, SWEEP_RATIO * swept))
            try:
                started = time.monotonic()
                known = recorded_tracks(db) | tracks
                for other in blocking - {round_id, None}:  # jobs this round's matches wait for
                    dispatcher.sweep(other, known)
                states = dispatcher.sweep(round_id, known)
                swept = time.monotonic() - started
            except (*dispatch.BROKER_ERRORS, OperationalError) as exc:
                log.warning("round %d: cannot reach the broker or the database (%s); trying again", round_id, exc)
        bar.close()
        return dispatcher.states(round_id)  # the last sweep's count may predate the last job's end
    finally:
        app.close()
        keys.redis.close()
