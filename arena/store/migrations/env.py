"""Alembic environment of the arena's schema, configured from code (there is no ``alembic.ini``).

``Database.upgrade()`` runs it on its own connection, handed over in ``config.attributes``. To write a
revision after changing the models, upgrade a scratch database and let Alembic compare::

    from alembic import command
    from arena.store.db import Database, migration_config

    db = Database("sqlite:////tmp/scratch.db")
    db.upgrade()
    with db.engine.begin() as connection:
        command.revision(migration_config(connection), message="what changed", autogenerate=True)

then read and tidy the new file under ``versions/``, and check it on PostgreSQL too (``tests/test_store.py``).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext

from arena.store.models import Base, UtcDateTime


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render the arena's own column types as plain SQLAlchemy ones, so revisions never import models."""
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters a table by copying it
    render_item=render_item,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
