"""Initial schema: teams, plugins and versions, tracks, rounds, jobs, artifacts, results.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 21:33:04.395128
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("tracks", sa.JSON(), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
        sa.UniqueConstraint("number", name=op.f("uq_rounds_number")),
    )
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("repo_url", sa.String(length=500), nullable=True),
        sa.Column("branch", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_teams_name")),
    )
    op.create_table(
        "tracks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracks")),
        sa.UniqueConstraint("name", name=op.f("uq_tracks_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name=op.f("fk_jobs_round_id_rounds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_key"), "jobs", ["key"], unique=False)
    op.create_index("ix_jobs_round_state", "jobs", ["round_id", "state"], unique=False)
    op.create_table(
        "plugins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_plugins_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugins")),
        sa.UniqueConstraint("team_id", "name", name=op.f("uq_plugins_team_id_name")),
    )
    op.create_table(
        "plugin_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("commit", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=500), nullable=False),
        sa.Column("archive", sa.LargeBinary(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("errors", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plugin_id"], ["plugins.id"], name=op.f("fk_plugin_versions_plugin_id_plugins")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin_versions")),
        sa.UniqueConstraint("plugin_id", "content_hash", name=op.f("uq_plugin_versions_plugin_id_content_hash")),
    )
    op.create_index(op.f("ix_plugin_versions_content_hash"), "plugin_versions", ["content_hash"], unique=False)
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("plugin_version_id", sa.Integer(), nullable=True),
        sa.Column("track", sa.String(length=100), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_version_id"], ["plugin_versions.id"], name=op.f("fk_artifacts_plugin_version_id_plugin_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("key", name=op.f("uq_artifacts_key")),
    )
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("attack_version_id", sa.Integer(), nullable=False),
        sa.Column("defense_version_id", sa.Integer(), nullable=False),
        sa.Column("track", sa.String(length=100), nullable=False),
        sa.Column("threat", sa.String(length=20), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("referee_version", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("samples", sa.LargeBinary(), nullable=True),
        sa.Column("gallery", sa.LargeBinary(), nullable=True),
        sa.Column("wall_time", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["attack_version_id"], ["plugin_versions.id"], name=op.f("fk_results_attack_version_id_plugin_versions")
        ),
        sa.ForeignKeyConstraint(
            ["defense_version_id"], ["plugin_versions.id"], name=op.f("fk_results_defense_version_id_plugin_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("key", name=op.f("uq_results_key")),
    )
    op.create_table(
        "round_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("plugin_version_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_version_id"],
            ["plugin_versions.id"],
            name=op.f("fk_round_entries_plugin_version_id_plugin_versions"),
        ),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name=op.f("fk_round_entries_round_id_rounds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_entries")),
        sa.UniqueConstraint("round_id", "plugin_version_id", name=op.f("uq_round_entries_round_id_plugin_version_id")),
    )
    op.create_table(
        "round_matches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("round_id", sa.Integer(), nullable=False),
        sa.Column("result_key", sa.String(length=64), nullable=False),
        sa.Column("attack_version_id", sa.Integer(), nullable=False),
        sa.Column("defense_version_id", sa.Integer(), nullable=False),
        sa.Column("track", sa.String(length=100), nullable=False),
        sa.Column("threat", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(
            ["attack_version_id"],
            ["plugin_versions.id"],
            name=op.f("fk_round_matches_attack_version_id_plugin_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["defense_version_id"],
            ["plugin_versions.id"],
            name=op.f("fk_round_matches_defense_version_id_plugin_versions"),
        ),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name=op.f("fk_round_matches_round_id_rounds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_round_matches")),
        sa.UniqueConstraint("round_id", "result_key", name=op.f("uq_round_matches_round_id_result_key")),
    )
    op.create_index(op.f("ix_round_matches_result_key"), "round_matches", ["result_key"], unique=False)


def downgrade() -> None:
    """Downgrade the schema."""
    op.drop_table("round_matches")
    op.drop_table("round_entries")
    op.drop_table("results")
    op.drop_table("artifacts")
    op.drop_table("plugin_versions")
    op.drop_table("plugins")
    op.drop_table("jobs")
    op.drop_table("tracks")
    op.drop_table("teams")
    op.drop_table("rounds")
