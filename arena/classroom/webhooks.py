"""Push webhooks of GitHub, GitLab and Gitea: which service sent a delivery, whether its signature holds, what
it announces, and each team's secret.

Each service signs a delivery with the secret pasted into the webhook's settings, its own way:

* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``;
* Gitea (and Forgejo): ``X-Gitea-Signature: <hex HMAC-SHA256 of the raw body>``;
* GitLab: ``X-Gitlab-Token: <the secret itself>``.

Every comparison is constant-time (:func:`hmac.compare_digest`). Nothing here touches the database: see
:mod:`arena.classroom.pushes` for what the arena does with a verified push.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SERVICES = ("github", "gitlab", "gitea")
#: a commit id of zeros: the branch was created (``before``) or deleted (``after``)
NO_COMMIT = re.compile(r"^0+$")
#: the most commits GitHub lists in a push's payload; GitLab and Gitea say how many there were
GITHUB_COMMITS = 2048
#: where each service names the repository in a payload: (object, key) pairs, every form of its URL
URL_FIELDS = {
    "github": [("repository", k) for k in ("clone_url", "ssh_url", "html_url", "git_url", "url")],
    "gitea": [("repository", k) for k in ("clone_url", "ssh_url", "html_url")],
    "gitlab": [("project", k) for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url")]
    + [("repository", k) for k in ("git_http_url", "git_ssh_url", "homepage", "url")],
}


class Refused(Exception):
    """A delivery the arena refuses: the HTTP status to answer and the reason (never the body)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Delivery:
    """A delivery's headers as the arena reads them: the service, its event, its id and its signature."""

    service: str
    event: str  # push, ping, or another event the arena ignores
    delivery: str  # the service's id (the same on a redelivery), else the body's SHA-256
    signature: str | None

    def verified(self, body: bytes, secret: str) -> bool:
        """Whether the delivery's signature is the one ``secret`` gives ``body``."""
        if not self.signature:
            return False
        if self.service == "gitlab":
            expected = secret
        else:
            expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            if self.service == "github":
                expected = f"sha256={expected}"
        return hmac.compare_digest(self.signature.strip().encode(), expected.encode())


@dataclass(frozen=True)
class Notice:
    """What a push announces: the repository (its URLs, normalised), the branch, the commits and the files."""

    repositories: frozenset[str]
    ref: str
    after: str | None
    pusher: str | None
    changed: frozenset[str] | None  # the paths its commits touched; None: unknown (a new branch, a long push)

    @property
    def branch(self) -> str | None:
        """The branch pushed to (None: a tag or another ref)."""
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def deleted(self) -> bool:
        """Whether the push deleted the branch."""
        return bool(self.after and NO_COMMIT.match(self.after))

    def touches(self, folder: str | None) -> bool:
        """Whether the push may change ``folder`` of the repository (None: the whole repository)."""
        if folder is None or self.changed is None:
            return True
        return any(path == folder or path.startswith(f"{folder}/") for path in self.changed)


def new_secret() -> str:
    """A new webhook secret (192 random bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    """Which service sent this delivery (Gitea also sends GitHub's headers, so it is asked first)."""
    if headers.get("X-Gitea-Event"):
        service, event, ids = "gitea", headers["X-Gitea-Event"], ("X-Gitea-Delivery",)
        signature = headers.get("X-Gitea-Signature")
    elif headers.get("X-Gitlab-Event"):
        service, ids, signature = "gitlab", ("Idempotency-Key", "X-Gitlab-Event-UUID"), headers.get("X-Gitlab-Token")
        event = {"Push Hook": "push"}.get(headers["X-Gitlab-Event"], headers["X-Gitlab-Event"])
    elif headers.get("X-GitHub-Event"):
        service, event, ids = "github", headers["X-GitHub-Event"], ("X-GitHub-Delivery",)
        signature = headers.get("X-Hub-Signature-256")
    else:
        raise Refused(
            400, "not a webhook of GitHub, GitLab or Gitea: no X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event"
        )
    found = next((headers[name].strip() for name in ids if headers.get(name, "").strip()), None)
    key = found[:150] if found else f"sha256:{hashlib.sha256(body).hexdigest()}"
    return Delivery(service, event.strip().lower(), f"{service}:{key}", signature)


def payload(body: bytes, content_type: str) -> dict:
    """The JSON object a delivery carries (``application/json``, or the ``payload`` field of a form)."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
            if len(fields.get("payload", [])) != 1:
                raise ValueError("a form without one 'payload' field")
            body = fields["payload"][0].encode()
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(
            400, f"the body is not a JSON payload ({exc}); set the content type to application/json"
        ) from None
    if not isinstance(data, dict):
        raise Refused(400, "the payload is not a JSON object")
    return data


def repositories(service: str, data: Mapping[str, object]) -> frozenset[str]:
    """The repository a payload names, as :func:`repo_key` normalises each of its URLs."""
    found = set()
    for holder, key in URL_FIELDS[service]:
        value = data.get(holder)
        url = value.get(key) if isinstance(value, dict) else None
        if isinstance(url, str) and url.strip():
            found.add(repo_key(url))
    return frozenset(found)


def notice(delivery: Delivery, data: Mapping[str, object]) -> Notice:
    """What a push payload announces; a payload without a repository, a ref or commits is refused (400)."""
    ref, after, commits = data.get("ref"), data.get("after"), data.get("commits", [])
    found = repositories(delivery.service, data)
    if not found or not isinstance(ref, str) or not isinstance(commits, list):
        raise Refused(400, "not a push payload: it needs a repository, a 'ref' and a list of 'commits'")
    pushed = after if isinstance(after, str) else None
    return Notice(found, ref, pushed, _pusher(delivery.service, data), _changed(delivery.service, data, commits))


def _pusher(service: str, data: Mapping[str, object]) -> str | None:
    """Who pushed: GitHub's pusher's name, GitLab's user name, Gitea's pusher's login."""
    if service == "gitlab":
        name = data.get("user_username") or data.get("user_name")
    elif isinstance(pusher := data.get("pusher"), dict):
        name = pusher.get("login") or pusher.get("username") or pusher.get("name")
    else:
        name = None
    return str(name)[:100] if name else None


def _changed(service: str, data: Mapping[str, object], commits: list[object]) -> frozenset[str] | None:
    """The paths the pushed commits added, modified or removed; None when the payload cannot tell them all."""
    before = data.get("before")
    if data.get("created") or data.get("forced") or (isinstance(before, str) and NO_COMMIT.match(before)):
        return None  # a new branch or a rewritten one: its commits are not all listed
    total = data.get("total_commits_count" if service == "gitlab" else "total_commits", len(commits))
    if (isinstance(total, int) and total > len(commits)) or (service == "github" and len(commits) >= GITHUB_COMMITS):
        return None
    paths: set[str] = set()
    for commit in commits:
        lists = [commit.get(k) for k in ("added", "modified", "removed")] if isinstance(commit, dict) else [None]
        if not all(isinstance(files, list) for files in lists):
            return None
        paths |= {str(path) for files in lists for path in files}
    return frozenset(paths)


def repo_key(url: str) -> str:
    """A repository URL normalised, so that its HTTPS, SSH and web forms compare equal.

    >>> repo_key("git@github.com:Class/Red.git") == repo_key("https://user:token@github.com/class/red/")
    True
    """
    text = url.strip()
    scp = re.fullmatch(r"(?:[^@/\s]+@)?([^:/\s]+):(.+)", text)
    if "://" in text:
        parts = urlsplit(text)
        host, path = (parts.hostname or "").lower(), parts.path
    elif scp and not text.startswith("/"):
        host, path = scp[1].lower(), scp[2]
    else:  # a path on this machine
        host, path = "", text
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host}/{path.lower()}"
