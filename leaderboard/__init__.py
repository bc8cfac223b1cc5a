"""The web board: read-only pages and a JSON API over the arena's database.

Run it with ``arena serve`` (or ``flask --app leaderboard run``); ``ARENA_DATABASE_URL`` (or
``ARENA_HOME``) says which database it reads. Nothing here writes but ``POST /hooks/push``, which records the
pushes git services announce and queues their syncs (:mod:`leaderboard.hooks`); the admin acts through the
``arena`` command.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException

from arena.config import Settings
from arena.store import Database
from leaderboard.standings import Standings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the board; ``test_config`` overrides settings: ``DATABASE_URL``, ``ARENA_HOME`` (its
    ``tracks.toml`` feeds the rules page; a webhook's sync runs there), ``STANDINGS_REFRESH`` (seconds a
    running round's standings may lag behind the database, default 5), ``BROKER_URL`` (where webhooks send
    syncs; default ``ARENA_BROKER_URL``) and ``HOOK_MAX_BYTES`` (default ``ARENA_HOOK_MAX_BYTES``, else 1 MiB)."""
    app = Flask(__name__)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    config = dict(test_config or {})
    if "DATABASE_URL" not in config or "ARENA_HOME" not in config:
        settings = Settings.from_env()
        config.setdefault("DATABASE_URL", settings.database_url)
        config.setdefault("ARENA_HOME", str(settings.home))
    app.config.from_mapping(config)
    app.extensions["arena_db"] = Database(app.config["DATABASE_URL"])
    app.extensions["arena_standings"] = Standings(refresh=app.config.get("STANDINGS_REFRESH", 5.0))

    from leaderboard import api, caching, filters, hooks, signin, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    hooks.init_app(app)
    filters.init_app(app)
    signin.init_app(app)
    caching.init_app(app)
    app.register_error_handler(HTTPException, _error)
    app.after_request(_security_headers)
    return app


#: what a page may load: its own scripts, styles and images only (style attributes: the heatmap's colours)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _security_headers(response: Any) -> Any:
    """No script but the board's own, no framing, no sniffing, no referrer beyond the board."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _error(exc: HTTPException) -> tuple[Any, int]:
    """Errors as JSON under ``/api/``, as a page elsewhere."""
    code = exc.code or 500
    if request.path.startswith("/api/"):
        return {"error": exc.description, "status": code}, code
    return render_template("error.html", error=exc), code
