"""The web board: read-only pages and a JSON API over the arena's database.

Run it with ``flask --app leaderboard run``; ``ARENA_DATABASE_URL`` (or ``ARENA_HOME``) says which
database it reads. Nothing here writes: the admin acts through the ``arena`` command.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from arena.config import Settings
from arena.store import Database


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create the board; ``test_config`` overrides settings such as ``DATABASE_URL``."""
    app = Flask(__name__)
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    config = dict(test_config or {})
    if "DATABASE_URL" not in config:
        config["DATABASE_URL"] = Settings.from_env().database_url
    app.config.from_mapping(config)
    app.extensions["arena_db"] = Database(app.config["DATABASE_URL"])

    from leaderboard import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    return app
