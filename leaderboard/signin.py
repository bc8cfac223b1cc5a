"""Signing in to the board: a team's token shows its own logs, the instructor's every team's.

The token (see :mod:`arena.results.access`) is checked against the database on every request, so a new token
retires the old one's sessions at once. The session cookie holds the token's SHA-256, signed with the
board's key (``SECRET_KEY``, else ``ARENA_BOARD_SECRET``, else a key of the process's own).
A signed-in viewer's pages are never kept for others (see :mod:`leaderboard.caching`).
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Flask, g, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from arena import config
from arena.results import access
from arena.store import Team
from leaderboard.lookup import database

bp = Blueprint("access", __name__)


def viewer() -> access.Viewer | None:
    """Who is signed in on this request (None: the public)."""
    if "viewer" not in g:
        digest = session.get("token")
        g.viewer, g.viewer_name = None, None
        if not digest:  # the public: no database work on its pages
            return None
        with database().session() as db_session:
            g.viewer = access.viewer(db_session, digest)
            if g.viewer is not None:
                g.viewer_name = "the instructor" if g.viewer.admin else db_session.get(Team, g.viewer.team_id).name
    return g.viewer


def team_name() -> str | None:
    """The name of the team signed in (None: the public or the instructor)."""
    found = viewer()
    return None if found is None or found.admin else g.viewer_name


def may_see(team_ids: set[int]) -> bool:
    """Whether the viewer may see what these teams own: their plugins' logs and tracebacks."""
    found = viewer()
    return found is not None and found.may_see(team_ids)


def private_log(text: str | None, team_ids: set[int]) -> dict[str, Any]:
    """A log for a page: ``log_tail`` (without the server's paths) for its owners, else None and whether
    one is ``log_hidden``."""
    if not text:
        return {"log_tail": None, "log_hidden": False}
    if may_see(team_ids):
        return {"log_tail": access.relative_paths(text), "log_hidden": False}
    return {"log_tail": None, "log_hidden": True}


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> str | Response:
    """A form for a token; a known one signs in (a team's or the instructor's)."""
    if request.method == "GET":
        return render_template("access/signin.html", failed=False)
    token = request.form.get("token", "").strip()
    with database().session() as db_session:
        known = access.viewer(db_session, access.digest(token)) if token else None
    if known is None:
        return render_template("access/signin.html", failed=True), 403  # type: ignore[return-value]
    session.clear()
    session["token"] = access.digest(token)
    return redirect(url_for("board.overview"))


@bp.route("/signout", methods=["POST", "GET"])
def signout() -> Response:
    """Forget the sign-in."""
    session.clear()
    return redirect(url_for("board.overview"))


def init_app(app: Flask) -> None:
    """The board's key for its session cookie, the sign-in pages, and ``viewer`` in every template."""
    if not app.config.get("SECRET_KEY"):
        # without a key of its own, one per process: sign-ins last until the board restarts (set
        # ARENA_BOARD_SECRET where several board processes serve one class)
        app.config["SECRET_KEY"] = config.board_secret() or secrets.token_hex(32)
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.register_blueprint(bp)

    @app.context_processor
    def signed_in() -> dict[str, Any]:
        if request.blueprint == "api" or request.endpoint == "static":
            return {}
        found = viewer()
        return {"viewer": found, "viewer_name": g.get("viewer_name")}
