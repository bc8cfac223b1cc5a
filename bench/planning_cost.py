"""What planning a round costs (no job runs): ``planner.plan_matches`` over N attacks x N defenses x 3 threats.

Prints the cells, the new jobs, the median of five plannings and digests of the jobs written (kind, key, params,
inputs, in order) and of their reasons and causes: two versions of the planner plan the same round when their
digests are equal (the secret is fixed, so the keys are too). Compare a checkout with another, paired:

    PYTHONPATH=/path/to/other/checkout python bench/planning_cost.py 20 before
    python bench/planning_cost.py 20 after
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="arena-planning-"))
os.environ["ARENA_HOME"] = str(HOME)
os.environ["ARENA_DATABASE_URL"] = f"sqlite:///{HOME}/arena.db"
(HOME / "secret").write_text("ab" * 32)  # the same secret in every run: the same keys

from arena.config import Settings  # noqa: E402
from arena.plan import planner  # noqa: E402 (after the environment it reads
from arena.rules.tracks import TRACKS  # noqa: E402
from arena.store import Database, Job, Plugin, PluginVersion, Team  # noqa: E402


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main(n: int, label: str) -> None:
    track, settings = TRACKS["digits"], Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    with db.session() as session:
        planner.store_evaluation(session, settings, track)
        for i in range(2 * n):
            kind = "attack" if i < n else "defense"
            threats = ["white-box", "gray-box", "black-box"]
            declared = {"norms": [track.norm], "threats": threats} if kind == "attack" else {}
            plugin = Plugin(name=f"p{i}", kind=kind, team=Team(name=f"t{i}"))
            manifest = {"declared": declared}
            version = PluginVersion(content_hash=f"{i:064x}", manifest=manifest, archive=b"", source="x", plugin=plugin)
            session.add(version)
    times = []
    for _ in range(5):
        with db.session() as session:
            versions = list(session.query(PluginVersion))
            attacks = [v for v in versions if v.plugin.kind == "attack"]
            defenses = [v for v in versions if v.plugin.kind == "defense"]
            started = time.perf_counter()
            plan = planner.plan_matches(session, settings, attacks, defenses, [track], 0)
            times.append(time.perf_counter() - started)
            jobs = digest([(j.kind, j.key, j.params, j.depends_on) for j in session.query(Job).order_by(Job.id)])
            session.rollback()
    reasons = digest([plan.reasons, sorted(plan.causes.items())])
    print(
        f"{label}: {plan.cells} cells, {sum(plan.new_jobs.values())} new jobs, median {statistics.median(times):.3f} s;"
    )
    print(f"{label}: jobs {jobs}, reasons {reasons}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
