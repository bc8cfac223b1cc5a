"""Round standings: a published round's scored boards, kept so that no board scores it again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "round_standings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("scoring_version", sa.String(length=20), nullable=False),
        sa.Column("boards", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name=op.f("fk_round_standings_round_id_rounds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_standings")),
        sa.UniqueConstraint("round_id", name=op.f("uq_round_standings_round_id")),
    )


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_table("round_standings")
