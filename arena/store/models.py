"""SQLAlchemy models: teams, plugins and their versions, tracks, rounds, jobs, artifacts and results.

The database is the truth for everything the arena knows; the broker (when there is one) is only
transport. Results and artifacts are keyed by content, so a new round recomputes only what changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: constraint names that are the same on every backend, so migrations can name what they alter or drop
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC, that comes back aware in UTC on every backend.

    PostgreSQL stores it as ``timestamp with time zone``; SQLite keeps no offset, so the UTC clock time
    is stored and UTC is attached again on loading. Naive datetimes are refused: their zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC before storing; refuse naive datetimes."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one, such as utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware datetime in UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every arena table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, bytes: LargeBinary, datetime: UtcDateTime}


class Team(Base):
    """A team of students (or the arena itself, for the built-in plugins)."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    repo_url: Mapped[str | None] = mapped_column(String(500))
    branch: Mapped[str] = mapped_column(String(100), default="main")
    path: Mapped[str | None] = mapped_column(String(200))  # its folder in a shared class repository
    daily_limit: Mapped[int | None]  # versions evaluated per day; None: the arena's default
    synced_commit: Mapped[str | None] = mapped_column(String(64))  # the commit its last sync pinned
    synced_at: Mapped[datetime | None]
    #: the key its git service signs push webhooks with (GitLab sends it as it is): kept as it is, since checking
    #: a signature needs the key itself; shown once, by the command that made it
    hook_secret: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    plugins: Mapped[list[Plugin]] = relationship(back_populates="team")


class Plugin(Base):
    """One attack or defense of a team; its code changes through versions."""

    __tablename__ = "plugins"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(10))  # "attack" | "defense"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None]  # its folder left the team's repository: it plays no more rounds

    team: Mapped[Team] = relationship(back_populates="plugins")
    versions: Mapped[list[PluginVersion]] = relationship(back_populates="plugin", order_by="PluginVersion.id")


#: validation statuses of a plugin version that wait for a verdict: a later sync validates it
WAITING = ("pending", "deferred", "error")


class PluginVersion(Base):
    """The exact code of a plugin: its folder as an archive, named by the hash of its content."""

    __tablename__ = "plugin_versions"
    __table_args__ = (UniqueConstraint("plugin_id", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    plugin_id: Mapped[int] = mapped_column(ForeignKey("plugins.id"))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    commit: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(500))  # where it was found: a folder, a repo, an entry point
    archive: Mapped[bytes]  # the plugin folder as a zip
    manifest: Mapped[dict[str, Any]]
    valid: Mapped[bool] = mapped_column(default=False)
    errors: Mapped[str | None] = mapped_column(Text)
    #: pending | valid | invalid | deferred (over the team's daily limit) | error (the arena's fault: tried again)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    path: Mapped[str | None] = mapped_column(String(500))  # its folder in the team's repository
    checks: Mapped[dict[str, Any] | None]  # what validation found: declarations, the smoke match
    log_tail: Mapped[str | None] = mapped_column(Text)  # what the plugin printed during validation
    evaluated_at: Mapped[datetime | None]  # when validation ran (counts against the team's daily limit)
    seen_at: Mapped[datetime | None]  # when a sync last found it as its plugin's current code
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    plugin: Mapped[Plugin] = relationship(back_populates="versions")


class TrackRow(Base):
    """A track as it was played: its configuration is copied here so results stay explainable (the rules
    themselves are :class:`arena.rules.tracks.Track`)."""

    __tablename__ = "tracks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    config: Mapped[dict[str, Any]]


class Round(Base):
    """One round of the repeated game: a frozen set of plugin versions played on some tracks."""

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | running | done | failed
    seed: Mapped[int] = mapped_column(default=0)
    tracks: Mapped[list[str]] = mapped_column(JSON)
    published: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closes_at: Mapped[datetime | None]  # when `arena round close --due` closes it (optional)
    started_at: Mapped[datetime | None]  # closed: its plugin versions frozen and its jobs planned
    finished_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]

    entries: Mapped[list[RoundEntry]] = relationship(back_populates="round", cascade="all, delete-orphan")
    matches: Mapped[list[RoundMatch]] = relationship(back_populates="round", cascade="all, delete-orphan")


class RoundEntry(Base):
    """A plugin version frozen into a round."""

    __tablename__ = "round_entries"
    __table_args__ = (UniqueConstraint("round_id", "plugin_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    plugin_version_id: Mapped[int] = mapped_column(ForeignKey("plugin_versions.id"))

    round: Mapped[Round] = relationship(back_populates="entries")
    plugin_version: Mapped[PluginVersion] = relationship()


class RoundMatch(Base):
    """A cell of a round's matrix: which result (by key) decides this pair on this track and threat."""

    __tablename__ = "round_matches"
    __table_args__ = (UniqueConstraint("round_id", "result_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    result_key: Mapped[str] = mapped_column(String(64), index=True)
    attack_version_id: Mapped[int] = mapped_column(ForeignKey("plugin_versions.id"))
    defense_version_id: Mapped[int] = mapped_column(ForeignKey("plugin_versions.id"))
    track: Mapped[str] = mapped_column(String(100))
    threat: Mapped[str] = mapped_column(String(20))

    round: Mapped[Round] = relationship(back_populates="matches")
    attack_version: Mapped[PluginVersion] = relationship(foreign_keys=[attack_version_id])
    defense_version: Mapped[PluginVersion] = relationship(foreign_keys=[defense_version_id])


class RoundStandings(Base):
    """A published round's scored boards (compressed JSON of ``arena.results.boards.Board``), written when it is
    published: a published round never changes, so no board process scores it again."""

    __tablename__ = "round_standings"

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), unique=True)
    scoring_version: Mapped[str] = mapped_column(String(20))  # boards scored by other rules are scored again
    boards: Mapped[bytes]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A unit of work: train a defense, a twin or a substitute, or play a match.

    ``key`` names its output (an artifact key or a result key); a job whose output already exists
    is never written again.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_round_state", "round_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    kind: Mapped[str] = mapped_column(String(20))  # train-defense | train-twin | train-substitute | match
    key: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]]
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)  # keys of required artifacts
    state: Mapped[str] = mapped_column(String(20), default="queued")  # queued | running | done | failed
    attempts: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    inputs: Mapped[list[JobInput]] = relationship(cascade="all, delete-orphan")


class JobInput(Base):
    """One key of a job's ``depends_on``, indexed: the jobs an artifact makes ready are found without
    reading the queue (a finished job costs the same with 15 jobs queued or 15,000)."""

    __tablename__ = "job_inputs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    key: Mapped[str] = mapped_column(String(64), index=True)


class Token(Base):
    """A board sign-in: a team's (its logs and failures) or, with no team, the instructor's (everything).

    Only the SHA-256 of the token is kept; the token itself is shown once, by the command that made it.
    """

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Push(Base):
    """A push a git service announced by webhook, for one team (a push to a shared class repository is one per
    team it concerns): what was pushed, and what the sync it queued found (``arena.classroom.pushes``)."""

    __tablename__ = "pushes"
    __table_args__ = (
        UniqueConstraint("delivery", "team_id"),
        Index("ix_pushes_team_received", "team_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"))
    service: Mapped[str] = mapped_column(String(10))  # github | gitlab | gitea
    delivery: Mapped[str] = mapped_column(String(200))  # the service's delivery id: a redelivery does nothing twice
    ref: Mapped[str] = mapped_column(String(255))
    commit: Mapped[str | None] = mapped_column(String(64))  # the commit pushed (the payload's ``after``)
    pusher: Mapped[str | None] = mapped_column(String(100))
    #: queued | running | done | failed (the sync could not fetch or read) | limited (over the daily limit)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    synced_commit: Mapped[str | None] = mapped_column(String(64))  # the commit its sync pinned
    #: the plugin folders the sync found changed: path, label, kind, status, errors
    folders: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)

    team: Mapped[Team] = relationship()


class Artifact(Base):
    """A trained model (defense, twin or substitute) or a track's evaluation set, which any worker can load."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # defense | twin | substitute | evaluation | smoke
    plugin_version_id: Mapped[int | None] = mapped_column(ForeignKey("plugin_versions.id"))
    track: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes]
    meta: Mapped[dict[str, Any]]  # train time, clean accuracy, epochs, ...
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _same_as_key(context: DefaultExecutionContext) -> str:
    """A result's content key when none is given: its own key (a first attempt)."""
    return context.get_current_parameters()["key"]


class Result(Base):
    """The outcome of one attempt at a match, written once under its key.

    ``content_key`` names the match by content (``arena.plan.keys.result_key``). Its first attempt is
    stored under that key; a replay (``attempt`` 1, 2, ...) under a key of its own, so the rounds that
    showed an earlier attempt keep showing it. A match failed without running, because inputs could
    not be made, lists their artifact keys in ``missing_inputs`` (None for a match that ran).
    """

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    content_key: Mapped[str] = mapped_column(String(64), index=True, default=_same_as_key)
    attempt: Mapped[int] = mapped_column(default=0)
    attack_version_id: Mapped[int] = mapped_column(ForeignKey("plugin_versions.id"))
    defense_version_id: Mapped[int] = mapped_column(ForeignKey("plugin_versions.id"))
    track: Mapped[str] = mapped_column(String(100))
    threat: Mapped[str] = mapped_column(String(20))
    seed: Mapped[int]
    referee_version: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))  # ok | failed
    error: Mapped[str | None] = mapped_column(Text)
    missing_inputs: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    log_tail: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]]
    samples: Mapped[bytes | None]  # per-sample records, npz
    gallery: Mapped[bytes | None]  # a few clean/adversarial pairs, npz
    wall_time: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    attack_version: Mapped[PluginVersion] = relationship(foreign_keys=[attack_version_id])
    defense_version: Mapped[PluginVersion] = relationship(foreign_keys=[defense_version_id])
