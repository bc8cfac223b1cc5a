"""Push webhooks with real parts: GitHub, GitLab and Gitea deliveries shaped as each documents them, signed with
the team's secret, sent to the real board (Flask's test client, and a served board over HTTP), for real git
repositories (a bare repository, a clone, commits and pushes with plain git), synced in a process of their own.

The teams register hosted URLs (``https://github.com/class/red.git``, ...); the test's own ``HOME`` holds a git
configuration whose ``url.<folder>.insteadOf`` fetches them from local bare repositories: no test needs the
internet, and the arena fetches exactly as it would from the service.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from services import redis_url
from sqlalchemy import select
from test_serve import free_port
from test_submissions import GIT_IDENTITY, Remote, git

from arena.classroom import submissions, webhooks
from arena.commands import enrolment
from arena.config import Settings
from arena.results import access
from arena.store import Database, Push, Team
from leaderboard import create_app

HOSTS = {
    "github": "https://github.com/class/",
    "gitlab": "https://gitlab.example.org/class/",
    "gitea": "http://gitea.example.org:3000/class/",
}
ZERO = "0" * 40
BROKEN = "from arena import Attack, hookimpl\nclass Broken(Attack)\n    pass\n"
#: seconds a sync may take: a fresh process, its sandbox's zygote, the smoke match
SYNC_SECONDS = 240


# --------------------------------------------------------------------------------------------------
# Deliveries as GitHub, GitLab and Gitea document them
# --------------------------------------------------------------------------------------------------


def pushed_commits(work: Path, before: str, after: str) -> list[dict[str, Any]]:
    """The commits of a push, read from the clone: id, message, time, author and the paths each touched."""
    span = after if before == ZERO else f"{before}..{after}"
    commits = []
    for sha in git("-C", str(work), "rev-list", "--reverse", span).split():
        changes: dict[str, list[str]] = {"added": [], "modified": [], "removed": []}
        for line in git(
            "-C", str(work), "diff-tree", "--root", "-r", "--no-commit-id", "--name-status", sha
        ).splitlines():
            status, path = line.split("\t", 1)
            changes[{"A": "added", "D": "removed"}.get(status[0], "modified")].append(path)
        message, stamp = git("-C", str(work), "log", "-1", "--format=%B%x00%aI", sha).rsplit("\0", 1)
        author = {"name": "Team", "email": "team@example.org"}
        commits.append({"id": sha, "message": message.strip(), "timestamp": stamp.strip(), "author": author} | changes)
    return commits


def github_payload(repo: str, before: str, after: str, commits: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``push`` event as GitHub sends it (docs.github.com: webhook events and payloads, push)."""
    base = HOSTS["github"] + repo
    listed = [
        c
        | {
            "tree_id": "f" * 40,
            "distinct": True,
            "url": f"{base}/commit/{c['id']}",
            "author": c["author"] | {"username": "student"},
            "committer": c["author"],
        }
        for c in commits
    ]
    return {
        "ref": "refs/heads/main", "before": before, "after": after,
        "repository": {
            "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": repo, "full_name": f"class/{repo}",
            "private": True, "owner": {"name": "class", "login": "class", "id": 1, "type": "Organization"},
            "html_url": base, "url": base, "clone_url": f"{base}.git", "git_url": f"git://github.com/class/{repo}.git",
            "ssh_url": f"git@github.com:class/{repo}.git", "svn_url": base, "default_branch": "main",
        },
        "pusher": {"name": "student", "email": "student@example.org"},
        "sender": {"login": "student", "id": 2, "type": "User"},
        "created": before == ZERO, "deleted": after == ZERO, "forced": False, "base_ref": None,
        "compare": f"{base}/compare/{before[:12]}...{after[:12]}",
        "commits": listed, "head_commit": listed[-1] if listed else None,
    }  # fmt: skip


def gitlab_payload(repo: str, before: str, after: str, commits: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``Push Hook`` as GitLab sends it (docs.gitlab.com: webhook events, push events)."""
    web = HOSTS["gitlab"] + repo
    ssh = f"git@gitlab.example.org:class/{repo}.git"
    listed = [c | {"title": c["message"].splitlines()[0], "url": f"{web}/-/commit/{c['id']}"} for c in commits]
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": after, "ref": "refs/heads/main",
        "ref_protected": True, "checkout_sha": after, "message": None, "user_id": 4, "user_name": "A Student",
        "user_username": "astudent", "user_email": "", "user_avatar": None, "project_id": 15,
        "project": {
            "id": 15, "name": repo, "description": "", "web_url": web, "avatar_url": None, "git_ssh_url": ssh,
            "git_http_url": f"{web}.git", "namespace": "class", "visibility_level": 0,
            "path_with_namespace": f"class/{repo}", "default_branch": "main", "homepage": web, "url": ssh,
            "ssh_url": ssh, "http_url": f"{web}.git",
        },
        "commits": listed, "total_commits_count": len(listed), "push_options": {},
        "repository": {"name": repo, "url": ssh, "description": "", "homepage": web, "git_http_url": f"{web}.git",
                       "git_ssh_url": ssh, "visibility_level": 0},
    }  # fmt: skip


def gitea_payload(repo: str, before: str, after: str, commits: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``push`` event as Gitea sends it (docs.gitea.com: webhooks, event information)."""
    base = HOSTS["gitea"] + repo
    user = {
        "id": 3,
        "login": "student",
        "full_name": "A Student",
        "email": "student@example.org",
        "username": "student",
    }
    listed = [
        c
        | {
            "url": f"{base}/commit/{c['id']}",
            "author": c["author"] | {"username": "student"},
            "committer": c["author"] | {"username": "student"},
            "verification": None,
        }
        for c in commits
    ]
    return {
        "ref": "refs/heads/main", "before": before, "after": after,
        "compare_url": f"{base}/compare/{before}...{after}", "commits": listed, "total_commits": len(listed),
        "head_commit": listed[-1] if listed else None,
        "repository": {
            "id": 140, "owner": {"id": 1, "login": "class", "username": "class"}, "name": repo,
            "full_name": f"class/{repo}", "description": "", "private": True, "fork": False,
            "html_url": base, "ssh_url": f"ssh://git@gitea.example.org:2222/class/{repo}.git",
            "clone_url": f"{base}.git", "website": "", "default_branch": "main",
        },
        "pusher": user, "sender": user,
    }  # fmt: skip


PAYLOADS = {"github": github_payload, "gitlab": gitlab_payload, "gitea": gitea_payload}


def signed_headers(service: str, body: bytes, secret: str, delivery: str) -> dict[str, str]:
    """The headers each service sends with a delivery, signed with ``secret`` its documented way."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    common = {"Content-Type": "application/json"}
    if service == "github":
        return common | {
            "User-Agent": "GitHub-Hookshot/044aadd", "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "292430182", "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": "1296269", "X-Hub-Signature": f"sha1={sha1}",
            "X-Hub-Signature-256": f"sha256={digest}",
        }  # fmt: skip
    if service == "gitlab":
        return common | {
            "User-Agent": "GitLab/17.5.0", "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret,
            "X-Gitlab-Instance": "https://gitlab.example.org", "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
            "X-Gitlab-Event-UUID": delivery, "Idempotency-Key": delivery,
        }  # fmt: skip
    return common | {  # Gitea sends its own headers, Gogs' and GitHub's
        "User-Agent": "Go-http-client/1.1", "X-Gitea-Delivery": delivery, "X-Gitea-Event": "push",
        "X-Gitea-Event-Type": "push", "X-Gitea-Signature": digest, "X-Gogs-Delivery": delivery,
        "X-Gogs-Event": "push", "X-Gogs-Signature": digest, "X-GitHub-Delivery": delivery, "X-GitHub-Event": "push",
        "X-GitHub-Event-Type": "push", "X-Hub-Signature": f"sha1={sha1}", "X-Hub-Signature-256": f"sha256={digest}",
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Teams, their repositories, the board
# --------------------------------------------------------------------------------------------------


class Repository(Remote):
    """A repository on a hosted service (a local bare one behind the service's URL), its clone, its last push."""

    def __init__(self, home: Path, service: str, name: str) -> None:
        super().__init__(home / "remotes", name)
        self.service, self.name, self.url, self.pushed = service, name, f"{HOSTS[service]}{name}.git", ZERO

    def attack(self, builtin: str, name: str, team: str, under: str = "") -> Path:
        """Copy a built-in attack into the clone as team ``team``'s plugin ``name``; return its folder."""
        return self.plugin("attack", builtin, name, team, under)

    def delivery(self, message: str) -> tuple[str, bytes]:
        """Commit and push the clone's changes; return the commit and the push's payload, as the service sends it."""
        after = self.commit(message)
        self.push()
        before, self.pushed = self.pushed, after
        commits = pushed_commits(self.work, before, after)
        return after, json.dumps(PAYLOADS[self.service](self.name, before, after, commits)).encode()


class Hosted:
    """A team whose repository is on a hosted service: its id, webhook secret and board token."""

    def __init__(self, db: Database, name: str, repository: Repository, **options: Any) -> None:
        self.name, self.repository, self.service = name, repository, repository.service
        submissions.add_team(db, name, repository.url, **options)
        with db.session() as session:
            self.id = session.scalar(select(Team.id).where(Team.name == name))
            self.secret, self.token = enrolment.issue_secret(session, self.id), access.issue(session, self.id)


def deliver(client: FlaskClient, team: Hosted, body: bytes, secret: str | None = None, **extra: str) -> Any:
    """Send a delivery of ``body`` as ``team``'s service would, signed with ``secret`` (the team's by default)."""
    headers = signed_headers(team.service, body, secret or team.secret, extra.pop("delivery", str(uuid.uuid4())))
    return client.post("/hooks/push", data=body, headers=headers | extra)


def settled(db: Database, team_id: int, count: int, timeout: float = SYNC_SECONDS) -> list[Push]:
    """The team's ``count`` newest pushes, once their syncs have ended."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            found = list(session.scalars(select(Push).where(Push.team_id == team_id).order_by(Push.id.desc())))
        if len(found) >= count and all(p.status not in ("queued", "running") for p in found[:count]):
            return found[:count]
        assert time.monotonic() < deadline, f"the syncs did not end: {[(p.id, p.status) for p in found]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One arena home for the module (the smoke baseline trains once), a git identity, and a git configuration
    that fetches the services' URLs from local bare repositories."""
    root = tmp_path_factory.mktemp("webhooks")
    (root / "user").mkdir()
    rewrites = "".join(f"\tinsteadOf = {url}\n" for url in HOSTS.values())
    (root / "user" / ".gitconfig").write_text(f'[url "{root / "remotes"}/"]\n{rewrites}')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "user"))
        patch.setenv("ARENA_HOME", str(root / "home"))
        patch.setenv("ARENA_BUILTINS", "fgsm,undefended")
        for key in ("ARENA_DATABASE_URL", "ARENA_BROKER_URL", "ARENA_PLUGIN_DIRS", "ARENA_DAILY_LIMIT"):
            patch.delenv(key, raising=False)
        for key, value in GIT_IDENTITY.items():
            patch.setenv(key, value)
        yield root


@pytest.fixture(scope="module")
def db(home: Path) -> Database:
    database = Database(Settings.from_env().database_url)
    database.upgrade()
    return database


@pytest.fixture(scope="module")
def app(home: Path, db: Database) -> Flask:
    settings = Settings.from_env()
    return create_app({"TESTING": True, "DATABASE_URL": db.url, "ARENA_HOME": str(settings.home)})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def signed_in(app: Flask, token: str) -> FlaskClient:
    browser = app.test_client()
    assert browser.post("/signin", data={"token": token}).status_code == 302
    return browser


def pushes_of(db: Database, team_id: int) -> list[Push]:
    with db.session() as session:
        return list(session.scalars(select(Push).where(Push.team_id == team_id).order_by(Push.id)))


# --------------------------------------------------------------------------------------------------
# Reading deliveries
# --------------------------------------------------------------------------------------------------


def test_every_form_of_a_repository_url_names_the_same_repository() -> None:
    forms = [
        "https://github.com/Class/Red.git", "https://github.com/class/red", "git@github.com:class/red.git",
        "ssh://git@github.com/class/red.git", "https://student:ghp_token@github.com/class/red/",
        "git://github.com/class/red.git",
    ]  # fmt: skip
    assert {webhooks.repo_key(url) for url in forms} == {"github.com/class/red"}
    assert webhooks.repo_key("ssh://git@gitea.example.org:2222/class/red.git") == webhooks.repo_key(
        "http://gitea.example.org:3000/class/red.git"
    )
    assert webhooks.repo_key("https://gitlab.example.org/group/sub/red.git") == "gitlab.example.org/group/sub/red"
    assert webhooks.repo_key("/srv/git/red.git") == webhooks.repo_key("file:///srv/git/red") == "/srv/git/red"
    assert webhooks.repo_key("https://github.com/class/red") != webhooks.repo_key("https://github.com/class/red2")
    assert webhooks.repo_key("https://github.com/class/red") != webhooks.repo_key("https://gitlab.com/class/red")


def test_gitea_is_told_from_github_though_it_sends_githubs_headers_too() -> None:
    body = b"{}"
    sent = webhooks.delivery(signed_headers("gitea", body, "s3cret", "d-1"), body)
    assert (sent.service, sent.event, sent.delivery) == ("gitea", "push", "gitea:d-1")
    assert sent.verified(body, "s3cret") and not sent.verified(body, "other") and not sent.verified(b"{ }", "s3cret")
    gitlab = webhooks.delivery(signed_headers("gitlab", body, "s3cret", "d-2"), body)
    assert (gitlab.service, gitlab.event, gitlab.delivery) == ("gitlab", "push", "gitlab:d-2")
    assert gitlab.verified(body, "s3cret") and not gitlab.verified(body, "s3cre")


def test_a_push_touches_a_folder_only_when_its_commits_changed_files_there() -> None:
    commit = {"id": "a" * 40, "message": "x", "timestamp": "2026-12-05T10:00:00+00:00", "author": {"name": "T"}}
    commit |= {"added": ["teams/red/plugins/attacks/x/plugin.toml"], "modified": [], "removed": []}
    sent = webhooks.Delivery("github", "push", "github:1", "sha256=0")
    data = github_payload("arena", "b" * 40, "a" * 40, [commit])
    push = webhooks.notice(sent, data)
    assert push.branch == "main" and push.touches("teams/red") and not push.touches("teams/redder")
    assert not push.touches("teams/blue") and push.touches(None)
    new_branch = webhooks.notice(sent, github_payload("arena", ZERO, "a" * 40, [commit]))
    assert new_branch.changed is None and new_branch.touches("teams/blue")  # not every commit is listed
    long_push = gitlab_payload("arena", "b" * 40, "a" * 40, [commit]) | {"total_commits_count": 21}
    assert webhooks.notice(webhooks.Delivery("gitlab", "push", "gitlab:1", "t"), long_push).changed is None


# --------------------------------------------------------------------------------------------------
# The board receives pushes
# --------------------------------------------------------------------------------------------------


def test_a_github_push_is_synced_and_listed_for_the_team_and_the_instructor_only(
    home: Path, db: Database, app: Flask, client: FlaskClient
) -> None:
    red = Hosted(db, "red", Repository(home, "github", "red"))
    other = Hosted(db, "teal", Repository(home, "github", "teal"))
    red.repository.attack("fgsm", "sign-step", "red")
    commit, body = red.repository.delivery("first attack")

    answer = deliver(client, red, body)

    assert answer.status_code == 202 and answer.get_json() == {"queued": ["red"], "limited": []}
    (push,) = settled(db, red.id, 1)
    assert (push.status, push.service, push.commit, push.synced_commit) == ("done", "github", commit, commit)
    assert push.pusher == "student" and push.ref == "refs/heads/main" and push.error is None
    (folder,) = push.folders
    assert (folder["label"], folder["kind"], folder["status"], folder["errors"]) == (
        "red/sign-step",
        "attack",
        "new",
        [],
    )
    with db.session() as session:
        assert session.scalar(select(Team.synced_commit).where(Team.id == red.id)) == commit
    with db.session() as session:
        admin = access.issue(session, None)
    for viewer, sees in ((red.token, True), (admin, True), (other.token, False)):
        page = signed_in(app, viewer).get(f"/teams/{red.id}").get_data(as_text=True)
        assert ("Pushes the arena received" in page) is sees
        assert (f"@{commit[:8]}</span></td>" in page and "red/sign-step" in page) if sees else True
    assert "Pushes the arena received" not in client.get(f"/teams/{red.id}").get_data(as_text=True)
    instructor = signed_in(app, admin)
    for path in ("/teams", f"/teams/{red.id}", "/status", "/api/teams", f"/api/teams/{red.id}", "/api/status"):
        assert red.secret not in instructor.get(path).get_data(as_text=True)  # the secret is never shown again
    assert client.get(f"/api/teams/{red.id}").get_json()["pushes"] is None
    listed = signed_in(app, red.token).get(f"/api/teams/{red.id}").get_json()["pushes"]
    assert [(p["commit"], p["status"], [f["status"] for f in p["folders"]]) for p in listed] == [
        (commit, "done", ["new"])
    ]


def test_a_gitlab_push_of_a_broken_plugin_shows_its_verdict_and_a_redelivery_does_nothing_twice(
    home: Path, db: Database, app: Flask, client: FlaskClient
) -> None:
    blue = Hosted(db, "blue", Repository(home, "gitlab", "blue"))
    folder = blue.repository.attack("fgsm", "fragile", "blue")
    (folder / "fgsm.py").write_text(BROKEN)
    commit, body = blue.repository.delivery("oops")
    delivery = str(uuid.uuid4())

    first = deliver(client, blue, body, delivery=delivery)
    (push,) = settled(db, blue.id, 1)
    again = deliver(client, blue, body, delivery=delivery)  # GitLab's "Resend request": the same idempotency key

    assert first.status_code == 202 and again.status_code == 200 and again.get_json()["duplicate"]
    assert len(pushes_of(db, blue.id)) == 1
    (folder_line,) = push.folders
    assert folder_line["status"] == "invalid" and "SyntaxError" in folder_line["errors"][0]
    assert push.pusher == "astudent" and push.synced_commit == commit
    page = signed_in(app, blue.token).get(f"/teams/{blue.id}").get_data(as_text=True)
    assert "blue/fragile" in page and "SyntaxError" in page and "synced" in page


def test_a_gitea_push_to_a_shared_repository_syncs_only_the_teams_whose_folders_it_changed(
    home: Path, db: Database, client: FlaskClient
) -> None:
    shared = Repository(home, "gitea", "arena")
    gold = Hosted(db, "gold", shared, path="teams/gold")
    silver = Hosted(db, "silver", shared, path="teams/silver")
    folder = shared.attack("fgsm", "gold-step", "gold", under="teams/gold")
    shared.attack("fgsm", "silver-step", "silver", under="teams/silver")
    _, body = shared.delivery("both teams")  # a new branch: its commits are not all listed, every team syncs

    assert deliver(client, gold, body).get_json() == {"queued": ["gold", "silver"], "limited": []}
    settled(db, gold.id, 1), settled(db, silver.id, 1)
    (folder / "NOTES.md").write_text("tuned eps\n")
    commit, body = shared.delivery("gold only")
    answer = deliver(client, silver, body)  # the repository's webhook holds one of its teams' secrets

    assert answer.status_code == 202 and answer.get_json() == {"queued": ["gold"], "limited": []}
    latest, _ = settled(db, gold.id, 2)
    assert latest.synced_commit == commit and [f["label"] for f in latest.folders] == ["gold/gold-step"]
    assert latest.folders[0]["path"] == "teams/gold/plugins/attacks/gold-step"
    assert len(pushes_of(db, silver.id)) == 1


def test_forged_unsigned_foreign_unknown_malformed_and_oversized_deliveries_are_refused_and_logged_without_body(
    home: Path, db: Database, app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    grey = Hosted(db, "grey", Repository(home, "github", "grey"))
    white = Hosted(db, "white", Repository(home, "github", "white"))
    (grey.repository.work / "README.md").write_text("MARKER-OF-THE-BODY\n")
    _, body = grey.repository.delivery("MARKER-OF-THE-BODY")
    unknown = body.replace(b"class/grey", b"class/nobody")
    sha = hashlib.sha256
    huge = json.dumps(json.loads(body) | {"padding": "x" * (1 << 20)}).encode()
    caplog.set_level(logging.WARNING, logger="arena.hooks")

    answers = {
        "forged": deliver(client, grey, body, secret="not-the-secret"),
        "unsigned": deliver(client, grey, body, **{"X-Hub-Signature-256": ""}),
        "another team's repository": deliver(client, grey, body, secret=white.secret),
        "unknown repository": deliver(client, grey, unknown),
        "malformed": deliver(client, grey, b'{"ref": "refs/heads/main", MARKER-OF-THE-BODY'),
        "oversized": deliver(client, grey, huge),
        "no service": client.post("/hooks/push", data=body, headers={"Content-Type": "application/json"}),
    }

    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {
        "forged": 403, "unsigned": 401, "another team's repository": 403, "unknown repository": 404,
        "malformed": 400, "oversized": 413, "no service": 400,
    }  # fmt: skip
    assert all(answer.get_json()["error"] for answer in answers.values())
    assert client.get("/hooks/push").status_code == 405
    assert pushes_of(db, grey.id) == [] and pushes_of(db, white.id) == []
    refusals = [r.getMessage() for r in caplog.records if r.name == "arena.hooks"]
    assert len(refusals) == len(answers) and all("refused a webhook delivery" in line for line in refusals)
    logged = "\n".join(refusals)
    assert "MARKER-OF-THE-BODY" not in logged and hmac.new(grey.secret.encode(), body, sha).hexdigest() not in logged
    assert grey.secret not in logged


def test_pings_other_branches_and_form_encoded_deliveries(home: Path, db: Database, client: FlaskClient) -> None:
    plum = Hosted(db, "plum", Repository(home, "github", "plum"))
    _, body = plum.repository.delivery("empty")
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1, "repository": json.loads(body)["repository"]})
    elsewhere = json.loads(body) | {"ref": "refs/heads/experiments"}
    form = b"payload=" + requests.utils.quote(json.dumps(elsewhere)).encode()

    pong = deliver(client, plum, ping.encode(), **{"X-GitHub-Event": "ping"})
    other = deliver(client, plum, form, **{"Content-Type": "application/x-www-form-urlencoded"})

    assert pong.status_code == 200 and pong.get_json() == {"pong": ["plum"]}
    assert other.status_code == 200 and "refs/heads/experiments" in other.get_json()["ignored"]
    assert pushes_of(db, plum.id) == []


def test_a_teams_pushes_are_limited_by_its_daily_limit_and_a_refused_one_is_taken_when_redelivered(
    home: Path, db: Database, app: Flask, client: FlaskClient
) -> None:
    repository = Repository(home, "gitea", "busy")
    busy = Hosted(db, "busy", repository, daily_limit=0)
    repository.attack("fgsm", "busy-step", "busy")
    commit, body = repository.delivery("first")
    delivery = str(uuid.uuid4())

    refused = deliver(client, busy, body, delivery=delivery)
    (limited,) = pushes_of(db, busy.id)
    page = signed_in(app, busy.token).get(f"/teams/{busy.id}").get_data(as_text=True)
    submissions.add_team(db, "busy", repository.url, daily_limit=1)
    taken = deliver(client, busy, body, delivery=delivery)  # the service's "redeliver": now within the limit
    (push,) = settled(db, busy.id, 1)
    _, body = repository.delivery("second")
    over = deliver(client, busy, body)

    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["limited"] == ["busy"] and "daily limit" in refused.get_json()["error"]
    assert limited.status == "limited" and "over the daily limit" in page
    assert taken.status_code == 202 and push.id == limited.id and push.status == "done" and push.commit == commit
    assert over.status_code == 429 and [p.status for p in pushes_of(db, busy.id)] == ["done", "limited"]


@pytest.mark.slow  # `arena serve` starting up
def test_a_push_through_a_served_board_over_http(home: Path, db: Database) -> None:
    coral = Hosted(db, "coral", Repository(home, "github", "coral"))
    coral.repository.attack("fgsm", "coral-step", "coral")
    commit, body = coral.repository.delivery("served")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "OMP_NUM_THREADS")}
    env |= {"ARENA_HOME": os.environ["ARENA_HOME"], "ARENA_BUILTINS": "fgsm,undefended"}
    command = [
        sys.executable,
        "-c",
        "from arena.commands.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/hooks/push"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url, timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "the board did not start"
                time.sleep(0.3)
        headers = signed_headers("github", body, coral.secret, str(uuid.uuid4()))
        answer = requests.post(url, data=body, headers=headers, timeout=30)
        chunks = (b"x" * 65536 for _ in range(20))  # 1.25 MiB without a Content-Length
        streamed = requests.post(url, data=chunks, headers=headers, timeout=30)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert answer.status_code == 202, output[-2000:]
    assert streamed.status_code == 411  # a body that does not say its length is not read
    (push,) = settled(db, coral.id, 1)
    assert push.status == "done" and push.synced_commit == commit and push.folders[0]["status"] == "new"


@pytest.mark.slow  # an `arena worker` starting up
@pytest.mark.service
def test_with_a_broker_a_celery_worker_syncs_the_push(home: Path, db: Database) -> None:
    navy = Hosted(db, "navy", Repository(home, "gitlab", "navy"))
    navy.repository.attack("fgsm", "navy-step", "navy")
    commit, body = navy.repository.delivery("to the workers")
    worker_home = home / "worker"
    with redis_url() as broker:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "OMP_NUM_THREADS")}
        env |= {"ARENA_HOME": str(worker_home), "ARENA_DATABASE_URL": db.url, "ARENA_BROKER_URL": broker}
        log = home / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-c", "from arena.commands.cli import main; main()", "worker"],
                env=env | {"ARENA_BUILTINS": "fgsm,undefended"}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            board = create_app({"TESTING": True, "DATABASE_URL": db.url, "ARENA_HOME": str(home), "BROKER_URL": broker})
            answer = deliver(board.test_client(), navy, body)
            (push,) = settled(db, navy.id, 1)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert answer.status_code == 202
    assert push.status == "done" and push.synced_commit == commit, log.read_text()[-3000:]
    assert [f["label"] for f in push.folders] == ["navy/navy-step"] and push.folders[0]["status"] == "new"
    assert list((worker_home / "repos").glob("*.git")), "the worker fetched the repository"
    assert f"push {push.id} of team navy: done" in log.read_text()


def test_a_push_that_cannot_be_queued_is_answered_503_and_taken_when_redelivered(
    home: Path, db: Database, client: FlaskClient
) -> None:
    sand = Hosted(db, "sand", Repository(home, "github", "sand"))
    commit, body = sand.repository.delivery("while the broker is away")
    delivery = str(uuid.uuid4())
    away = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": db.url,
            "ARENA_HOME": os.environ["ARENA_HOME"],
            "BROKER_URL": "redis://127.0.0.1:1/0",
        }
    )

    lost = deliver(away.test_client(), sand, body, delivery=delivery)
    (unsent,) = pushes_of(db, sand.id)
    taken = deliver(client, sand, body, delivery=delivery)
    (push,) = settled(db, sand.id, 1)

    assert lost.status_code == 503 and "could not be queued" in lost.get_json()["error"]
    assert unsent.status == "unsent" and "redeliver" in unsent.error
    assert taken.status_code == 202 and push.status == "done" and push.synced_commit == commit
