"""Submissions and rounds: teams' repositories and limits, plugin versions' validation, scheduled rounds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Upgrade the schema; existing versions keep their validity as their status."""
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("path", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("daily_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("synced_commit", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("synced_at", Timestamp, nullable=True))
    with op.batch_alter_table("plugins") as batch:
        batch.add_column(sa.Column("withdrawn_at", Timestamp, nullable=True))
    with op.batch_alter_table("plugin_versions") as batch:
        batch.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="invalid"))
        batch.add_column(sa.Column("path", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("checks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("log_tail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("evaluated_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("seen_at", Timestamp, nullable=True))
    versions = sa.table("plugin_versions", sa.column("status", sa.String), sa.column("valid", sa.Boolean))
    op.execute(versions.update().where(versions.c.valid.is_(True)).values(status="valid"))
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("closes_at", Timestamp, nullable=True))
        batch.add_column(sa.Column("published_at", Timestamp, nullable=True))


def downgrade() -> None:
    """Downgrade the schema."""
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("published_at")
        batch.drop_column("closes_at")
    with op.batch_alter_table("plugin_versions") as batch:
        for column in ("seen_at", "evaluated_at", "log_tail", "checks", "path", "status"):
            batch.drop_column(column)
    with op.batch_alter_table("plugins") as batch:
        batch.drop_column("withdrawn_at")
    with op.batch_alter_table("teams") as batch:
        for column in ("synced_at", "synced_commit", "daily_limit", "path"):
            batch.drop_column(column)
