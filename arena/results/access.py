"""Who may see what on the board: tokens for teams and the instructor, and texts without the server's paths.

A team signs in with its token (``arena team add`` prints it, ``arena team token NAME`` makes a new one)
and then sees its own plugins' logs: validation output, training and match log tails, tracebacks. The
instructor's token (``arena team token --admin``) sees every team's. The public sees failure reasons
but no log. Only a token's SHA-256 is stored; making a new token retires the previous one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from arena.store import Token

#: an absolute path up to a plugin's own folder in a plugin cache, an installed package, the standard library
#: or the arena
_PATHS = (
    (re.compile(r"/(?:[^\s\"'/]+/)*plugin-cache/[0-9a-f]{8,}/"), ""),
    (re.compile(r"/(?:[^\s\"'/]+/)*(?:site|dist)-packages/"), ""),
    (re.compile(r"/(?:[^\s\"'/]+/)*lib/python3\.\d+/"), ""),
    (re.compile(r"/(?:[^\s\"'/]+/)*(?=arena/[a-z_/]+\.py)"), ""),
    # any other absolute path (the arena's home, a data folder, a temporary folder): its last part only
    (re.compile(r"(?<![\w:/.~-])/(?:[^\s\"'/:()\[\],]+/)+(?=[^\s\"'/])"), "…/"),
)


@dataclass(frozen=True)
class Viewer:
    """A signed-in viewer: a team (by id) or the instructor (``team_id`` None)."""

    team_id: int | None

    @property
    def admin(self) -> bool:
        return self.team_id is None

    def may_see(self, team_ids: set[int]) -> bool:
        """Whether this viewer may see what the teams ``team_ids`` own (their logs)."""
        return self.admin or self.team_id in team_ids


def digest(token: str) -> str:
    """What the arena stores of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue(session: Session, team_id: int | None) -> str:
    """A new token for the team (None: the instructor); the previous one stops working. Shown once."""
    session.execute(delete(Token).where(Token.team_id.is_(None) if team_id is None else Token.team_id == team_id))
    token = secrets.token_urlsafe(24)
    session.add(Token(team_id=team_id, digest=digest(token)))
    return token


def viewer(session: Session, token_digest: str | None) -> Viewer | None:
    """Who holds the token with this digest, if it is current."""
    if not token_digest:
        return None
    row = session.scalar(select(Token).where(Token.digest == token_digest))
    return None if row is None else Viewer(row.team_id)


def relative_paths(text: str | None) -> str | None:
    """``text`` (a traceback, a log, a reason) without the server's absolute paths: a plugin's files relative to
    its folder, installed packages and the standard library from their package, the arena's from ``arena/``, any
    other path as ``…/`` and its last part."""
    if text is None:
        return None
    for pattern, replacement in _PATHS:
        text = pattern.sub(replacement, text)
    return text
