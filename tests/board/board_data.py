"""What the board's tests share: the rows they write, hostile text, the pages, signing in."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from test_scoring import Rows

from arena.results import access
from arena.store import PluginVersion, Result, Team

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

#: every page, and its twin under /api/ (the API's names differ only for the overview)
PAGES = ["/", "/matrix", "/rounds", "/teams", "/status", "/jobs", "/rules"]
APIS = [
    "/api/",
    "/api/leaderboard",
    "/api/matrix",
    "/api/rounds",
    "/api/teams",
    "/api/status",
    "/api/jobs",
    "/api/rules",
]
#: when the test's verdicts were reached
VALIDATED = datetime(2025, 1, 2, 9, 30, tzinfo=UTC)


def sign_in(app: Flask, client: FlaskClient, team: str | None = None) -> str:
    """Sign ``client`` in with a new token of ``team`` (None: the instructor's); return the token."""
    with app.extensions["arena_db"].session() as session:
        team_id = None if team is None else session.scalar(select(Team.id).where(Team.name == team))
        token = access.issue(session, team_id)
    assert client.post("/signin", data={"token": token}).status_code == 302
    return token


class BoardRows(Rows):
    """Rows whose plugin versions also carry what a sync records: status, checks, log tail, validation time."""

    def version(
        self,
        team: str,
        plugin: str,
        kind: str,
        commit: str | None = None,
        *,
        valid: bool = True,
        errors: str | None = None,
        status: str | None = None,
        checks: dict[str, Any] | None = None,
        log_tail: str | None = None,
        evaluated_at: datetime | None = None,
    ) -> int:
        """A new version; ``status`` defaults to what ``valid`` says, and a verdict gets a validation time."""
        status = status or ("valid" if valid else "invalid")
        version_id = super().version(team, plugin, kind, commit, valid=status == "valid", errors=errors)
        with self.db.session() as s:
            row = s.get(PluginVersion, version_id)
            row.status, row.checks, row.log_tail = status, checks, log_tail
            row.evaluated_at = evaluated_at or (VALIDATED if status in ("valid", "invalid") else None)
        return version_id

    def withdraw(self, version_id: int, at: datetime) -> None:
        """Withdraw the plugin of a version, as a sync does when its folder leaves the repository."""
        with self.db.session() as s:
            s.get(PluginVersion, version_id).plugin.withdrawn_at = at


class Played:
    """Ids of what the ``played`` fixture wrote."""

    def __init__(self, rows: Rows) -> None:
        rows.track("digits", clean_floor=0.8, norm="linf", eps=0.2, eval_size=4)
        self.fgsm = rows.version("red", "fgsm", "attack", commit="0123456789abcdef")
        self.crashy = rows.version(EVIL, "crashy", "attack")
        self.madry = rows.version("blue", "madry", "defense")
        self.plain = rows.version("blue", "plain", "defense")
        self.first = rows.round(1, status="done", published=True)
        rows.match(self.first, self.fgsm, self.madry, [1, 1, 1, 0], threat="gray-box")
        self.second = rows.round(2)
        rows.match(self.second, self.fgsm, self.madry, [1, 1, 0, 0])
        rows.match(self.second, self.fgsm, self.plain, [0, 0, 0, 1], clean=[0, 1, 1, 1])
        rows.match(self.second, self.crashy, self.madry, status="failed", error="<b>boom</b>", log_tail=f"log {EVIL}")
        self.pending = rows.match(self.second, self.crashy, self.plain, status="pending")
        self.broken_job = rows.job(
            self.second, "train-defense", "failed", params={"track": "digits", "defense": self.plain},
            error="<i>out of memory</i>", log_tail=f"trace {EVIL}", attempts=2, worker="gpu-1",
        )  # fmt: skip
        rows.job(self.second, "match", "done", params={"track": "digits", "threat": "white-box", "attack": self.fgsm})
        rows.job(self.second, "match", "queued", params={"track": "digits", "attack": self.crashy})


def match_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'href="/matches/(\d+)"', page)]


def failed_match(app: Flask) -> int:
    """The id of the played round's failed match (crashy against madry, round 2)."""
    with app.extensions["arena_db"].session() as session:
        return session.scalar(select(Result.id).where(Result.status == "failed"))


def plugin_id(client: FlaskClient, name: str) -> int:
    teams = client.get("/api/teams").json["teams"]
    return next(p["id"] for t in teams for p in t["plugins"] if p["name"] == name)
