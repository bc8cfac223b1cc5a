"""Webhooks: each team's webhook secret, and the pushes its git service announced.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("hook_secret", sa.String(length=64), nullable=True))
    op.create_table(
        "pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(length=10), nullable=False),
        sa.Column("delivery", sa.String(length=200), nullable=False),
        sa.Column("ref", sa.String(length=255), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("pusher", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_commit", sa.String(length=64), nullable=True),
        sa.Column("folders", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_pushes_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pushes")),
        sa.UniqueConstraint("delivery", "team_id", name=op.f("uq_pushes_delivery_team_id")),
    )
    op.create_index("ix_pushes_team_received", "pushes", ["team_id", "received_at"], unique=False)


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_index("ix_pushes_team_received", table_name="pushes")
    op.drop_table("pushes")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("hook_secret")
