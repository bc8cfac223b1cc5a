"""How fast the board answers a push webhook: a verified push (202, its sync sent to the broker), a redelivery
(200) and a forged one (403), with a class of 60 teams and of 600.

The board is the real app (Flask's test client, no HTTP), on a SQLite file; each verified push is recorded and
its sync sent as a Celery task to a Redis database of the bench's own (claimed as the tests claim theirs, emptied
at the end; no worker takes the tasks). Every delivery is a GitHub push of one commit, signed with its team's
secret; no team gets more pushes than its daily limit (10), so none is refused for it.

    python bench/webhook_answer.py [--teams 60 600] [--pushes 200]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from services import redis_url  # noqa: E402  (the tests' claim on a Redis database)
from sqlalchemy import select  # noqa: E402

from arena.classroom import submissions
from arena.commands import enrolment  # noqa: E402
from arena.store import Database, Team  # noqa: E402
from leaderboard import create_app  # noqa: E402


def payload(team: str) -> bytes:
    """A GitHub push of one commit to ``class/<team>``."""
    base = f"https://github.com/class/{team}"
    commit = {"id": uuid.uuid4().hex + "0" * 8, "message": "tune", "added": [], "removed": [],
              "modified": [f"plugins/attacks/{team}-step/attack.py"]}  # fmt: skip
    return json.dumps({
        "ref": "refs/heads/main", "before": "1" * 40, "after": commit["id"], "created": False, "forced": False,
        "repository": {"name": team, "full_name": f"class/{team}", "html_url": base, "clone_url": f"{base}.git",
                       "ssh_url": f"git@github.com:class/{team}.git"},
        "pusher": {"name": team}, "commits": [commit], "head_commit": commit,
    }).encode()  # fmt: skip


def headers(body: bytes, secret: str, delivery: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}"}  # fmt: skip


def measure(teams: int, pushes: int, broker: str) -> dict[str, list[float]]:
    """Answer times (ms) of verified pushes, redeliveries and forged deliveries with ``teams`` teams."""
    home = Path(tempfile.mkdtemp(prefix="arena-bench-hooks-"))
    db = Database(f"sqlite:///{home / 'arena.db'}")
    db.upgrade()
    secrets = {}
    for n in range(teams):
        name = f"team{n:03d}"
        submissions.add_team(db, name, f"git@github.com:class/{name}.git", daily_limit=10)
        with db.session() as session:
            secrets[name] = enrolment.issue_secret(session, session.scalar(select(Team.id).where(Team.name == name)))
    client = create_app({"DATABASE_URL": db.url, "ARENA_HOME": str(home), "BROKER_URL": broker}).test_client()
    times: dict[str, list[float]] = {"push (202)": [], "redelivery (200)": [], "forged (403)": []}
    for n in range(pushes):
        name = f"team{n % teams:03d}"
        body, delivery = payload(name), str(uuid.uuid4())
        for what, secret, expected in (
            ("push (202)", secrets[name], 202),
            ("redelivery (200)", secrets[name], 200),
            ("forged (403)", "not-the-secret", 403),
        ):
            started = time.perf_counter()
            answer = client.post("/hooks/push", data=body, headers=headers(body, secret, delivery))
            times[what].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == expected, (what, answer.status_code, answer.get_json())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teams", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--pushes", type=int, default=200)
    args = parser.parse_args()
    logging.getLogger("arena.hooks").setLevel(logging.ERROR)  # the forged deliveries' refusals
    with redis_url() as broker:
        for teams in args.teams:
            pushes = min(args.pushes, teams * 10)
            for what, ms in measure(teams, pushes, broker).items():
                ms.sort()
                p95 = ms[int(0.95 * (len(ms) - 1))]
                median = statistics.median(ms)
                print(f"{teams:>4} teams  {what:<17} median {median:6.2f} ms  p95 {p95:6.2f} ms  (n={len(ms)})")


if __name__ == "__main__":
    main()
