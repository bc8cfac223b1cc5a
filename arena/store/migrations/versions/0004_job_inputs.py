"""Job inputs: each key a job depends on, indexed, so a finished job finds the jobs it made ready directly.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema; the open jobs' inputs are copied from their ``depends_on``."""
    inputs = op.create_table(
        "job_inputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_inputs_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_inputs")),
    )
    op.create_index(op.f("ix_job_inputs_job_id"), "job_inputs", ["job_id"], unique=False)
    op.create_index(op.f("ix_job_inputs_key"), "job_inputs", ["key"], unique=False)
    jobs = sa.table(
        "jobs", sa.column("id", sa.Integer), sa.column("state", sa.String), sa.column("depends_on", sa.JSON)
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(jobs.c.id, jobs.c.depends_on).where(jobs.c.state.in_(("queued", "running"))))
    values = [{"job_id": job_id, "key": key} for job_id, depends in rows for key in depends or []]
    if values:
        op.bulk_insert(inputs, values)


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_index(op.f("ix_job_inputs_key"), table_name="job_inputs")
    op.drop_index(op.f("ix_job_inputs_job_id"), table_name="job_inputs")
    op.drop_table("job_inputs")
