"""Replays: a match's results are attempts under one content key; failed inputs are marked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 00:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: how a match failed without running said so before this revision (arena/executors.py, arena/dispatch.py)
INPUT_FAILED = "an input could not be made%"


def upgrade() -> None:
    """Upgrade the schema; every existing result is the first attempt of its match."""
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("content_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("missing_inputs", sa.JSON(none_as_null=True), nullable=True))
    results = sa.table("results", sa.column("key", sa.String), sa.column("content_key", sa.String))
    op.execute(results.update().values(content_key=results.c.key))
    with op.batch_alter_table("results") as batch:
        batch.alter_column("content_key", existing_type=sa.String(length=64), nullable=False)
        batch.create_index(op.f("ix_results_content_key"), ["content_key"], unique=False)
    _mark_missing_inputs(op.get_bind())


def downgrade() -> None:
    """Downgrade the schema (replays stay, under their own keys)."""
    with op.batch_alter_table("results") as batch:
        batch.drop_index(op.f("ix_results_content_key"))
        for column in ("missing_inputs", "attempt", "content_key"):
            batch.drop_column(column)


def _mark_missing_inputs(connection: sa.Connection) -> None:
    """Mark the matches failed without running: the inputs their job waited for that still have no artifact
    (all of them, when every one was made since)."""
    results = sa.table(
        "results", sa.column("key", sa.String), sa.column("error", sa.Text), sa.column("missing_inputs", sa.JSON)
    )
    jobs = sa.table("jobs", sa.column("key", sa.String), sa.column("kind", sa.String), sa.column("depends_on", sa.JSON))
    made = set(connection.scalars(sa.select(sa.column("key")).select_from(sa.table("artifacts"))))
    failed = connection.scalars(sa.select(results.c.key).where(results.c.error.like(INPUT_FAILED))).all()
    for key in failed:
        query = sa.select(jobs.c.depends_on).where(jobs.c.key == key, jobs.c.kind == "match").limit(1)
        depends = connection.scalar(query) or []
        missing = [input_key for input_key in depends if input_key not in made] or depends
        connection.execute(results.update().where(results.c.key == key).values(missing_inputs=missing))
